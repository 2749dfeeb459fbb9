"""The [dispatcher] configuration section: bounds and refusals naming the field."""

from __future__ import annotations

import pytest

from cluster.config import ConfigError, load_config


def test_defaults_and_overrides_from_the_environment():
    config = load_config(env={"SIPCLUSTER_DISPATCHER_PROBE_ALIVE_CODES": "200,404",
                              "SIPCLUSTER_DISPATCHER_FOREIGN_SET": "carriers"})
    assert config.dispatcher.alive_codes() == frozenset({200, 404})
    assert config.dispatcher.foreign_set == "carriers"
    assert load_config(env={}).dispatcher.probe_interval == 10.0


@pytest.mark.parametrize(("env", "field"), [
    ({"SIPCLUSTER_DISPATCHER_PROBE_ALIVE_CODES": "200,abc"}, "dispatcher.probe_alive_codes[1]"),
    ({"SIPCLUSTER_DISPATCHER_PROBE_ALIVE_CODES": "99"}, "dispatcher.probe_alive_codes[0]"),
    ({"SIPCLUSTER_DISPATCHER_PROBE_ALIVE_CODES": ""}, "dispatcher.probe_alive_codes"),
    ({"SIPCLUSTER_DISPATCHER_FOREIGN_SET": "no spaces"}, "dispatcher.foreign_set"),
    ({"SIPCLUSTER_DISPATCHER_PROBE_INTERVAL": "0"}, "dispatcher.probe_interval"),
    ({"SIPCLUSTER_DISPATCHER_PROBE_DOWN_AFTER": "0"}, "dispatcher.probe_down_after"),
])
def test_unusable_values_are_refused_naming_the_field(env, field):
    with pytest.raises(ConfigError) as error:
        load_config(env=env)
    assert error.value.field == field
