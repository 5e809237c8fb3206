"""The serving package's layers: the worker core never imports Flask, HTTP exceptions live in one module.

The rule is the one ``serving/__init__.py`` states: the core modules take
request facts as arguments and raise plain exceptions; routes, request hooks,
body parsing and the error table (the HTTP side) are the only Flask users.
"""

from __future__ import annotations

import datetime as dt
import importlib
import inspect
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import serving

CORE = ("holder", "follow", "inference", "monitor", "recorder", "metrics", "logs", "state", "config")
"""The worker core: what loads, scores, watches and records, with no request in sight."""
HTTP_EXCEPTIONS = "serving.http_errors"

_IMPORT_CORE_WITHOUT_FLASK = """
import importlib, importlib.abc, json, sys, traceback

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("flask", "werkzeug"):
            raise ImportError(f"{name} is blocked: the serving core must not import it")
        return None

sys.meta_path.insert(0, Blocked())
failed = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module("serving." + name)
    except ImportError:
        failed[name] = traceback.format_exc(limit=-6)
print(json.dumps({"failed": failed, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("flask", "werkzeug"))}))
"""


def test_the_core_imports_without_flask_or_werkzeug():
    """Each core module imports with flask and werkzeug unimportable, so neither reaches it through another module.

    Before: holder (werkzeug's ServiceUnavailable), monitor (the /drift blueprint), predlog (Flask's
    request globals), follow and state (through config's flask.Config, state's current_app) all failed.
    """
    result = subprocess.run([sys.executable, "-c", _IMPORT_CORE_WITHOUT_FLASK, *CORE], capture_output=True, text=True,
                            timeout=300, cwd=Path(serving.__file__).parents[1])
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert outcome == {"failed": {}, "loaded": []}, "\n".join(outcome["failed"].values())


def test_the_package_docstring_states_the_rule_for_exactly_these_modules():
    """The rule's paragraph names every module this file checks, and no other (the doc and the test agree)."""
    (rule,) = [part for part in (serving.__doc__ or "").split("\n\n") if "never imports flask" in part]
    assert "werkzeug" in rule
    named = set(re.findall(r"``(\w+)``", rule[:rule.index("never imports flask")]))
    assert named == set(CORE), named


def test_http_exception_classes_live_in_one_module():
    """Every werkzeug HTTPException subclass serving defines is in serving.http_errors (before: in five modules)."""
    from werkzeug.exceptions import HTTPException

    defined = {}
    for info in pkgutil.walk_packages(serving.__path__, "serving."):
        if info.name == "serving.__main__":
            continue  # importing it runs the command
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, HTTPException) and cls.__module__.startswith("serving."):
                defined[cls.__qualname__] = cls.__module__
    assert defined and set(defined.values()) == {HTTP_EXCEPTIONS}, defined


def test_the_recorder_takes_the_request_facts_as_arguments(tmp_path, served_model):
    """Recording needs no Flask request (before: Recorder.record read request_id, key_id and the start time from flask.g)."""
    from blackbox.monitoring.predlog import PredictionLog, read_log
    from serving.inference import Scored
    from serving.logs import RequestLog
    from serving.metrics import Metrics
    from serving.recorder import Recorder

    db = tmp_path / "log.db"
    recorder = Recorder(PredictionLog(str(db)), Metrics(), RequestLog("json"))
    record = dict(zip(served_model.schema.columns, [None] * len(served_model.schema.columns)))
    ts = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    recorder.record(served_model, [record], Scored([0], None, []),
                    request_id="outside-a-request", client_id="alice", latency_ms=12.5, ts=ts)
    recorder.close(timeout=20)
    rows = read_log(str(db))
    assert rows["request_id"].tolist() == ["outside-a-request"] and rows["client_id"].tolist() == ["alice"]
    assert rows["latency_ms"].tolist() == [12.5]
    assert rows["ts"].iloc[0].to_pydatetime().replace(tzinfo=dt.UTC) == ts

