"""Sets up the ALB bench's account in a running moto (benches/alb_drain.sh).

    alb_setup.py ENDPOINT DELAY_S INTERVAL_S NET N BASE_PORT

Creates a VPC holding NET.0/24, a target group with the seed's settings
(deregistration delay DELAY_S, health checks every INTERVAL_S, healthy
threshold 2), N EC2 instances at NET.1..N, registers instance i on port
BASE_PORT + i, waits until every target is healthy and prints the target
group's ARN and then "id port" per instance. Every address is a 127.x value
nothing dials; the only endpoint is moto on 127.0.0.1.
"""
import sys
import time

import boto3


def main():
    endpoint, delay, interval, net, n, base = sys.argv[1:7]
    n, base = int(n), int(base)
    kw = dict(
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    ec2 = boto3.client("ec2", **kw)
    elb = boto3.client("elbv2", **kw)
    first, second, _ = net.split(".")
    vpc = ec2.create_vpc(CidrBlock=f"{first}.{second}.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"{net}.0/24", AvailabilityZone="us-east-1a")[
        "Subnet"
    ]["SubnetId"]
    tg = elb.create_target_group(
        Name="bench-tg",
        Protocol="HTTP",
        Port=80,
        VpcId=vpc,
        TargetType="instance",
        HealthCheckPath="/health",
        HealthCheckIntervalSeconds=max(5, int(float(interval))),
        HealthyThresholdCount=2,
    )["TargetGroups"][0]["TargetGroupArn"]
    elb.modify_target_group_attributes(
        TargetGroupArn=tg,
        Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": str(int(float(delay)))}],
    )
    ids = []
    for i in range(1, n + 1):
        out = ec2.run_instances(
            ImageId="ami-12345678", MinCount=1, MaxCount=1, SubnetId=subnet,
            PrivateIpAddress=f"{net}.{i}",
        )
        ids.append(out["Instances"][0]["InstanceId"])
    elb.register_targets(
        TargetGroupArn=tg,
        Targets=[{"Id": tid, "Port": base + i} for i, tid in enumerate(ids, start=1)],
    )
    deadline = time.monotonic() + 600
    while True:
        states = [
            d["TargetHealth"]["State"]
            for d in elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
        ]
        if len(states) == n and all(s == "healthy" for s in states):
            break
        if time.monotonic() > deadline:
            sys.exit(f"targets never became healthy: {states}")
        time.sleep(0.2)
    print(tg)
    for i, tid in enumerate(ids, start=1):
        print(tid, base + i)


if __name__ == "__main__":
    main()
