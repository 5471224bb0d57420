//! Traffic between target groups: the weights of the listener's forward
//! action (canary by target group, blue/green switches), with the listener's
//! other actions and the forward action's stickiness kept as they are.

use aws_sdk_elasticloadbalancingv2 as elb;
use elb::types::{Action, ActionTypeEnum, ForwardActionConfig, TargetGroupTuple};

use super::errors::sdk_error;
use super::ElbV2;
use crate::primitives::{ActionError, ActionResult, ErrorKind};

/// ELBv2 accepts forward weights 0-999.
const MAX_TG_WEIGHT: u32 = 999;

impl ElbV2 {
    /// Sets the weights of the listener's forward action: each `(target group
    /// ARN, weight)` pair, 0-999; target groups not listed stop receiving
    /// traffic. Other actions of the listener (authentication, …) and the
    /// forward action's stickiness are kept as they are.
    pub async fn set_target_group_weights(&self, weights: &[(String, u32)]) -> ActionResult<()> {
        let Some(listener) = self.listener_arn.as_deref() else {
            return Err(ActionError::new(
                ErrorKind::Lb,
                "lb.listener_arn is not set: ELBv2 shifts traffic between target groups \
                 through the weights of a listener's forward action; add the listener's ARN",
            ));
        };
        if weights.is_empty() {
            return Err(ActionError::new(
                ErrorKind::InvalidArgument,
                format!("no target groups to forward to on listener {listener}"),
            ));
        }
        if let Some((arn, w)) = weights.iter().find(|(_, w)| *w > MAX_TG_WEIGHT) {
            return Err(ActionError::new(
                ErrorKind::InvalidArgument,
                format!("weight {w} for target group {arn}: ELBv2 weights are 0-{MAX_TG_WEIGHT}"),
            ));
        }
        let elb = &self.clients().await.elb;
        let described = elb
            .describe_listeners()
            .listener_arns(listener)
            .send()
            .await
            .map_err(|e| sdk_error("DescribeListeners", "listener", listener, e))?;
        let current = described
            .listeners()
            .first()
            .map(|l| l.default_actions().to_vec())
            .unwrap_or_default();
        let actions = with_forward_weights(&current, weights).map_err(|found| {
            ActionError::new(
                ErrorKind::Lb,
                format!(
                    "listener {listener} has no forward default action (its actions: {found}): \
                     rollscript shifts traffic only through the weights of a forward action"
                ),
            )
        })?;
        elb.modify_listener()
            .listener_arn(listener)
            .set_default_actions(Some(actions))
            .send()
            .await
            .map_err(|e| sdk_error("ModifyListener", "listener", listener, e))?;
        Ok(())
    }
}

impl ElbV2 {
    /// The target groups the listener's forward action sends traffic to,
    /// with their weights (a plain `TargetGroupArn` forward is weight 1).
    pub(super) async fn forward_weights(&self) -> ActionResult<Vec<(String, u32)>> {
        let Some(listener) = self.listener_arn.as_deref() else {
            return Err(ActionError::new(
                ErrorKind::Lb,
                "lb.listener_arn is not set: with one target group per pool, the live pool is \
                 the one the listener forwards to; add the listener's ARN",
            ));
        };
        let described = self
            .clients()
            .await
            .elb
            .describe_listeners()
            .listener_arns(listener)
            .send()
            .await
            .map_err(|e| sdk_error("DescribeListeners", "listener", listener, e))?;
        let actions = described
            .listeners()
            .first()
            .map(|l| l.default_actions().to_vec())
            .unwrap_or_default();
        Ok(forwarded(&actions))
    }
}

/// `(target group, weight)` of the forward default action(s).
fn forwarded(actions: &[Action]) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for a in actions
        .iter()
        .filter(|a| a.r#type() == Some(&ActionTypeEnum::Forward))
    {
        match a.forward_config().map(|f| f.target_groups()) {
            Some(groups) if !groups.is_empty() => {
                for g in groups {
                    if let Some(arn) = g.target_group_arn() {
                        out.push((arn.to_string(), g.weight().unwrap_or(1).max(0) as u32));
                    }
                }
            }
            _ => out.extend(a.target_group_arn().map(|arn| (arn.to_string(), 1))),
        }
    }
    out
}

/// `current` default actions with the forward action's target groups
/// replaced by `weights`; Err(the action types found) when there is none.
fn with_forward_weights(
    current: &[Action],
    weights: &[(String, u32)],
) -> Result<Vec<Action>, String> {
    let tuples: Vec<TargetGroupTuple> = weights
        .iter()
        .map(|(arn, w)| {
            TargetGroupTuple::builder()
                .target_group_arn(arn)
                .weight(*w as i32)
                .build()
        })
        .collect();
    let forward = |a: &Action| a.r#type() == Some(&ActionTypeEnum::Forward);
    if current.is_empty() {
        return Ok(vec![Action::builder()
            .r#type(ActionTypeEnum::Forward)
            .forward_config(
                ForwardActionConfig::builder()
                    .set_target_groups(Some(tuples))
                    .build(),
            )
            .build()]);
    }
    if !current.iter().any(forward) {
        return Err(current
            .iter()
            .map(|a| a.r#type().map(|t| t.as_str()).unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(", "));
    }
    Ok(current
        .iter()
        .map(|a| {
            if !forward(a) {
                return a.clone();
            }
            let mut a = a.clone();
            // A plain TargetGroupArn and a ForwardConfig with several groups
            // cannot be combined: the weights live in the ForwardConfig only.
            a.target_group_arn = None;
            let stickiness = a
                .forward_config
                .as_ref()
                .and_then(|f| f.target_group_stickiness_config.clone());
            a.forward_config = Some(
                ForwardActionConfig::builder()
                    .set_target_groups(Some(tuples.clone()))
                    .set_target_group_stickiness_config(stickiness)
                    .build(),
            );
            a
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::aws::tests::{GREEN, TG};

    #[test]
    fn forward_weights_replace_the_forward_action_and_keep_the_others() {
        let auth = Action::builder()
            .r#type(ActionTypeEnum::AuthenticateOidc)
            .order(1)
            .build();
        let fwd = Action::builder()
            .r#type(ActionTypeEnum::Forward)
            .target_group_arn(TG)
            .order(2)
            .build();
        let out = with_forward_weights(
            &[auth.clone(), fwd],
            &[(TG.to_string(), 90), (GREEN.to_string(), 10)],
        )
        .unwrap();
        assert_eq!(out[0], auth);
        assert_eq!(out[1].order(), Some(2));
        assert_eq!(out[1].target_group_arn(), None);
        let groups: Vec<(&str, i32)> = out[1]
            .forward_config()
            .unwrap()
            .target_groups()
            .iter()
            .map(|t| (t.target_group_arn().unwrap(), t.weight().unwrap()))
            .collect();
        assert_eq!(groups, [(TG, 90), (GREEN, 10)]);

        let redirect = Action::builder().r#type(ActionTypeEnum::Redirect).build();
        assert_eq!(
            with_forward_weights(&[redirect], &[(TG.to_string(), 100)]).unwrap_err(),
            "redirect"
        );
    }
}
