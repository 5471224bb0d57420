//! AWS errors as operators need them: the code and message AWS sent and the
//! ARN of the target group (or listener) involved — the SDK's own Display
//! says only "service error".

use aws_sdk_elasticloadbalancingv2 as elb;
use elb::config::http::HttpResponse;
use elb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use elb::operation::RequestId;

use super::ElbV2;
use crate::primitives::{ActionError, ErrorKind};

impl ElbV2 {
    pub(super) fn sdk_error<E>(&self, op: &str, err: SdkError<E, HttpResponse>) -> ActionError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        sdk_error(op, "target group", &self.target_group_arn, err)
    }
}

/// `DescribeTargetHealth failed for target group arn:…: TargetGroupNotFound: One
/// or more target groups not found` — the code and message AWS sent, or the
/// whole error chain when no response came (network, credentials).
pub(super) fn sdk_error<E>(
    op: &str,
    what: &str,
    arn: &str,
    err: SdkError<E, HttpResponse>,
) -> ActionError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let text = match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => DisplayErrorContext(&err).to_string(),
    };
    let mut e = ActionError::new(
        ErrorKind::Lb,
        format!("{op} failed for {what} {arn}: {text}"),
    );
    if let Some(code) = err.code() {
        e = e.detail("aws_error_code", code);
    }
    if let Some(id) = err.request_id() {
        e = e.detail("aws_request_id", id);
    }
    // AWS refused (a service error) or it never left (construction): the
    // call did nothing. A timeout, a dispatch or response failure may have
    // reached AWS: the outcome is unknown.
    match err {
        SdkError::ServiceError(_) | SdkError::ConstructionFailure(_) => e,
        _ => e.outcome_unknown(),
    }
}
