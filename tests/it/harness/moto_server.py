"""moto's AWS emulator (ELBv2 + EC2) for rollscript's integration tests.

Stock moto answers DescribeTargetHealth with `healthy` the moment a target is
registered and forgets a target the moment it is deregistered, and offers no
way to make a target fail its health checks. rollscript's waits exist for
exactly those states, so this helper patches moto's ELBv2 model in-process
before serving, to emulate what a real Application Load Balancer reports:

* `initial` (Elb.RegistrationInProgress) for --initial-seconds after a register;
* `draining` (Target.DeregistrationInProgress) after a deregister, for the
  target group's `deregistration_delay.timeout_seconds` (tests set it short);
  draining targets are still listed by a DescribeTargetHealth without targets;
* forced health through tags on the target group, once `initial` is over:
      rollscript:health:<target-id>      = unhealthy | healthy | unused | ...
      rollscript:reason:<target-id>      = Target.ResponseCodeMismatch (optional)
      rollscript:description:<target-id> = Health checks failed ... (optional)

Listens on 127.0.0.1 only; prints the port as the first line of stdout (bind
to port 0 so parallel tests never race for a port), then serves until killed.
"""

import argparse
import logging
import os
import sys
import threading
import time

from moto.elbv2.models import ELBv2Backend, FakeHealthStatus, FakeTargetGroup

DEFAULT_REASONS = {
    "unhealthy": ("Target.ResponseCodeMismatch", "Health checks failed with these codes: [502]"),
    "initial": ("Elb.RegistrationInProgress", "Target registration is in progress"),
    "draining": ("Target.DeregistrationInProgress", "Target deregistration is in progress"),
    "unused": ("Target.NotRegistered", "Target is not registered to the target group"),
}

INITIAL_SECONDS = 1.0
# Per target group (keyed by ARN): target id -> time.monotonic() of the event.
# Module state, not attributes on moto's objects, so moto's own copying and
# serialisation of target groups never sees it.
_lock = threading.Lock()
_registered_at = {}
_draining = {}  # arn -> {id: (deadline, target dict)}

_register = FakeTargetGroup.register
_deregister = FakeTargetGroup.deregister
_describe_target_health = ELBv2Backend.describe_target_health


def register(self, targets):
    _register(self, targets)
    now = time.monotonic()
    with _lock:
        for t in targets:
            _registered_at.setdefault(self.arn, {})[t["Id"]] = now
            # Registering a draining target cancels the drain, as on AWS.
            _draining.get(self.arn, {}).pop(t["Id"], None)


def deregister(self, targets):
    before = {t["Id"]: self.targets.get(t["Id"]) for t in targets}
    _deregister(self, targets)
    delay = float(self.attributes.get("deregistration_delay.timeout_seconds", 300))
    deadline = time.monotonic() + delay
    with _lock:
        for tid, t in before.items():
            _registered_at.get(self.arn, {}).pop(tid, None)
            if t is not None and delay > 0:
                _draining.setdefault(self.arn, {})[tid] = (deadline, dict(t))


def status(tid, port, health_port, state, reason=None, description=None):
    default = DEFAULT_REASONS.get(state, (None, None))
    return FakeHealthStatus(
        tid, port, health_port, state, reason or default[0], description or default[1]
    )


def describe_target_health(self, target_group_arn, targets):
    statuses = _describe_target_health(self, target_group_arn, targets)
    tg = self.target_groups[target_group_arn]
    tags = self.tagging_service.get_tag_dict_for_resource(target_group_arn)
    now = time.monotonic()
    with _lock:
        draining = {
            tid: t for tid, (deadline, t) in _draining.get(tg.arn, {}).items() if deadline > now
        }
        registered_at = dict(_registered_at.get(tg.arn, {}))
    out = []
    for s in statuses:
        tid = s.instance_id
        if s.status == "unused" and s.reason == "Target.NotRegistered" and tid in draining:
            s = status(tid, s.port, s.health_check_port, "draining")
        elif s.status == "healthy":
            if now - registered_at.get(tid, 0.0) < INITIAL_SECONDS:
                s = status(tid, s.port, s.health_check_port, "initial")
            elif f"rollscript:health:{tid}" in tags:
                s = status(
                    tid,
                    s.port,
                    s.health_check_port,
                    tags[f"rollscript:health:{tid}"],
                    tags.get(f"rollscript:reason:{tid}"),
                    tags.get(f"rollscript:description:{tid}"),
                )
        out.append(s)
    if not targets:
        # AWS lists draining targets with the registered ones; moto has dropped them.
        for tid, t in draining.items():
            out.append(status(tid, t["Port"], tg.health_check_port, "draining"))
    return out


def main():
    global INITIAL_SECONDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--initial-seconds", type=float, default=INITIAL_SECONDS)
    args = parser.parse_args()
    INITIAL_SECONDS = args.initial_seconds

    FakeTargetGroup.register = register
    FakeTargetGroup.deregister = deregister
    ELBv2Backend.describe_target_health = describe_target_health

    # Imported after patching: the server builds its backends from the models.
    from werkzeug.serving import make_server
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    # One log line per request would drown the test output.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = make_server(
        "127.0.0.1", args.port, DomainDispatcherApplication(create_backend_app), threaded=True
    )
    os.environ["MOTO_PORT"] = str(server.server_port)
    print(server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
