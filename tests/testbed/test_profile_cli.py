"""`moe2 profile` against real fake-engine nodes, and its output feeding `moe2 serve`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from orchestrator.profiles import Profile
from testbed.procs import Served

MOE2 = [sys.executable, "-m", "testbed.cli"]


def test_profile_measures_every_expert_and_category(tmp_path: Path) -> None:
    with Served.fake_node(0.0) as quick, Served.fake_node(0.01) as slow:
        cluster = tmp_path / "cluster.toml"
        cluster.write_text(
            f'[[nodes]]\nname = "quick"\naddress = "{quick.target}"\n'
            f'[[nodes]]\nname = "slow"\naddress = "{slow.target}"\n'
        )
        out = tmp_path / "profile.json"
        done = subprocess.run(
            [
                *MOE2,
                "profile",
                "--cluster",
                str(cluster),
                "--out",
                str(out),
                "--categories",
                "sst2",
                "copa",
                "--samples",
                "4",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
    profile = Profile.load(out)
    assert set(profile.experts) == {"quick", "slow"}
    for expert in profile.experts.values():
        assert set(expert.categories) == {"sst2", "copa"}
        assert expert.energy_source == "estimated"
        for stats in expert.categories.values():
            assert stats.samples == 4
            assert stats.latency_s["p50"] <= stats.latency_s["p95"] <= stats.latency_s["max"]
            assert stats.accuracy is not None
    # the slow node takes 10 ms per choice token: its latency shows it
    assert (
        profile.experts["slow"].categories["sst2"].latency_s["p50"]
        > profile.experts["quick"].categories["sst2"].latency_s["p50"] + 0.01
    )


def test_profile_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.toml"
    cluster.write_text('[[nodes]]\nname = "a"\naddress = "127.0.0.1:1"\n')
    done = subprocess.run(
        [
            *MOE2,
            "profile",
            "--cluster",
            str(cluster),
            "--out",
            str(tmp_path / "p.json"),
            "--categories",
            "poetry",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "poetry" in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr
