"""worker.flow_timer (RFC 5626 Flow-Timer) against the edge's idle timeout."""

from __future__ import annotations

import pytest

from cluster.config import ConfigError, load_config


def test_flow_timer_must_stay_below_the_idle_timeout():
    config = load_config(None, env={}, overrides={"worker.flow_timer": 50, "edge.tcp_idle_timeout": 60})
    assert config.worker.flow_timer == 50
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={"SIPCLUSTER_WORKER_FLOW_TIMER": "120", "SIPCLUSTER_EDGE_TCP_IDLE_TIMEOUT": "90"})
    assert caught.value.field == "worker.flow_timer"


@pytest.mark.parametrize("value", [5, 3601])
def test_flow_timer_bounds(value):
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={}, overrides={"worker.flow_timer": value})
    assert caught.value.field == "worker.flow_timer"
