"""A serving worker keeps its held model out of the garbage collector's full collections (serving/heap.py).

Each test that builds an app with SETTLE_HEAP runs in a child interpreter: freezing is process-wide, and the
pytest process must not be frozen.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

CHILD = textwrap.dedent("""
    import gc, json, sys, weakref
    from serving import create_app
    from serving.holder import load_model
    artifact, public, settle = sys.argv[1], sys.argv[2], sys.argv[3] == "on"
    options = {"trusted_keys": [public]}
    app = create_app({"ARTIFACT": artifact, "LOAD_OPTIONS": options, "SETTLE_HEAP": settle})
    holder = next(iter(app.extensions["blackbox"].models.values())).holder
    frozen_after_load = gc.get_freeze_count()

    class Cycle:
        pass

    first = load_model(artifact, options)
    first.leftover = Cycle()
    first.leftover.me = first.leftover  # garbage only a collection frees, as a by-value module's functions and globals
    gone = weakref.ref(first.leftover)
    holder.model = first  # installed: frozen with the model
    del first
    holder.model = load_model(artifact, options)  # a swap: the first model is dropped, its cycle left behind
    with app.test_client() as client:
        status = client.post("/predict", json={"pclass": 3, "sex": "male", "age": 30, "sibsp": 0, "parch": 0,
                                               "fare": 8.05, "embarked": "S", "name": "Doe, Mr. John"}).status_code
    print(json.dumps({"frozen_after_load": frozen_after_load, "frozen_after_swap": gc.get_freeze_count(),
                      "old_cycle_collected": gone() is None, "status": status}))
""")


def child(served_artifact, serving_keys, settle: str) -> dict:
    import json

    done = subprocess.run([sys.executable, "-c", CHILD, str(served_artifact), str(serving_keys[1]), settle],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_each_model_installed_is_frozen_and_the_one_swapped_out_is_collected(served_artifact, serving_keys):
    found = child(served_artifact, serving_keys, "on")
    assert found["frozen_after_load"] > 10_000  # the loaded model (and what the app imported) is out of collections
    assert found["frozen_after_swap"] > 10_000
    assert found["old_cycle_collected"]  # unfrozen and collected at the next install: no leak per reload
    assert found["status"] == 200


def test_an_app_built_inside_another_program_freezes_nothing(served_artifact, serving_keys):
    found = child(served_artifact, serving_keys, "off")
    assert found["frozen_after_load"] == 0 and found["frozen_after_swap"] == 0
    assert found["status"] == 200


@pytest.mark.parametrize(("environment", "expected"), [({}, True), ({"BLACKBOX_SETTLE_HEAP": "false"}, None)])
def test_blackbox_serve_turns_it_on_for_its_workers_unless_the_environment_says(monkeypatch, environment, expected):
    import serving.cli
    from blackbox.errors import UsageError

    seen = {}

    def stop(path, load, **overrides):
        seen.update(overrides)
        raise UsageError("stopped by the test")

    monkeypatch.delenv("BLACKBOX_SETTLE_HEAP", raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(serving.cli, "_config", stop)
    CliRunner().invoke(serving.cli.serve, ["model.bbx"])
    assert seen["SETTLE_HEAP"] is expected  # None: not overridden, so the environment's value holds
