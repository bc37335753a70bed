"""Which GCS addresses name one cluster (the test a Ray connection is reused or refused by)."""

from __future__ import annotations

import socket

import psutil

from orchestrator.cluster import same_cluster


def this_machines_address() -> str:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return "127.0.0.1"


def test_the_same_head_by_loopback_or_by_the_machines_address_is_one_cluster():
    assert same_cluster("127.0.0.1:6379", f"{this_machines_address()}:6379")
    assert same_cluster("ray-head:6379", "ray-head:6379")


def test_another_port_or_another_host_is_another_cluster():
    assert not same_cluster("127.0.0.1:6379", "127.0.0.1:6380")
    assert not same_cluster("ray-head-a.invalid:6379", "ray-head-b.invalid:6379")
    assert not same_cluster("ray-head-a.invalid:6379", "127.0.0.1:6379")
    assert not same_cluster(None, "127.0.0.1:6379")
