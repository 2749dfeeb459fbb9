"""Link key pairs: `sipcluster keys generate`, loading, and start-up errors."""

from __future__ import annotations

import stat
import subprocess
import sys

import pytest
import zmq

from cluster.config import ConfigError, load_config
from cluster.link.keys import PUBLIC_FILE, SECRET_FILE, load_keys, node_keys
from cluster.local import LocalCluster, UpOptions
from tests.e2e.harness import ROOT


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_keys_generate_writes_a_pair_with_a_private_secret_and_refuses_to_overwrite(tmp_path):
    target = tmp_path / "keys"
    result = _cli("keys", "generate", "--dir", str(target))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((target / SECRET_FILE).stat().st_mode) == 0o600
    keys = load_keys(target)
    assert zmq.curve_public(keys.secret) == keys.public
    assert keys.secret.decode() not in (target / PUBLIC_FILE).read_text()
    again = _cli("keys", "generate", "--dir", str(target))
    assert again.returncode == 1 and "--force" in again.stderr
    assert load_keys(target) == keys
    assert _cli("keys", "generate", "--dir", str(target), "--force").returncode == 0
    assert load_keys(target) != keys


@pytest.mark.parametrize("damage", ["missing", "malformed", "mismatched"])
def test_an_unusable_key_dir_fails_at_start_naming_the_field(tmp_path, damage):
    assert _cli("keys", "generate", "--dir", str(tmp_path)).returncode == 0
    secret = tmp_path / SECRET_FILE
    if damage == "missing":
        secret.unlink()
    elif damage == "malformed":
        secret.write_text('curve\n    public-key = "short"\n    secret-key = "short"\n')
    else:
        other = zmq.curve_keypair()[1].decode()
        text = secret.read_text()
        start = text.index('secret-key = "') + len('secret-key = "')
        secret.write_text(text[:start] + other + text[start + 40:])
    with pytest.raises(ConfigError, match="cluster.link_secret_dir"):
        node_keys(str(tmp_path))
    config = tmp_path / "node.toml"
    config.write_text(f'[cluster]\nlink_secret_dir = "{tmp_path}"\n')
    result = _cli("worker", "--config", str(config))
    assert result.returncode == 2 and "cluster.link_secret_dir" in result.stderr, result.stderr


def test_without_a_key_dir_each_node_makes_a_fresh_pair():
    assert node_keys(None).public != node_keys(None).public


def test_up_gives_each_node_its_own_pair_in_the_state_dir(tmp_path):
    cluster = LocalCluster(UpOptions(1, 1, "127.0.0.1", 5060, "http://127.0.0.1:2379", ["localhost"],
                                     "/sipcluster", None, None))
    cluster.workdir = tmp_path
    dirs = [load_config(cluster._node_config(role, 1), env={}).cluster.link_secret_dir
            for role in ("worker", "edge")]
    keys = [load_keys(d) for d in dirs]
    assert dirs[0] != dirs[1] and keys[0] != keys[1]
    assert all(d.startswith(str(tmp_path)) for d in dirs)
