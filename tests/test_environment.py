"""The load-time environment policy, and `blackbox requirements`.

Versions are faked in a re-signed manifest (the payload is the real one), so
each case loads the real model in this interpreter with one recorded version
changed: what a server with that version installed would see.
"""

from __future__ import annotations

import hashlib
import re
import sys
import warnings
from pathlib import Path

import pytest

import blackbox
from blackbox.artifact import unpack
from blackbox.cli import main as blackbox_cli
from blackbox.containment import environment

from _helpers import marker_payload, resign

ROOT = Path(__file__).resolve().parent.parent


def rewrite(path: Path, out: Path, edit, payload: bytes | None = None) -> Path:
    manifest = unpack(path.read_bytes()).manifest()
    edit(manifest)
    if payload is not None:
        manifest["payload"] = {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    out.write_bytes(resign(path.read_bytes(), manifest, payload))
    return out


def outcome(path: Path, **policy) -> tuple[str, str]:
    """("refused", message), ("warned", the warnings) or ("loaded", "") for one blackbox.load."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            blackbox.load(path, **policy)
        except blackbox.EnvironmentMismatchError as exc:
            return "refused", exc.message
    shown = [str(w.message) for w in caught if issubclass(w.category, blackbox.VersionMismatchWarning)]
    return ("warned", "\n".join(shown)) if shown else ("loaded", "")


def changed(version: str, level: str, step: int) -> str | None:
    """``version`` one step away at a level: "series" (major; 0.y for 0.x), "feature" (the next
    component: minor), "patch" (the one after). None when that step does not exist (below 0)."""
    release = [int(p) for p in re.match(r"\d+(?:\.\d+)*", version).group(0).split(".")]
    series = next((i for i, p in enumerate(release) if p), len(release) - 1)
    index = {"series": series, "feature": series + 1, "patch": series + 2}[level]
    release += [0] * (index + 1 - len(release))
    release[index] += step
    return None if release[index] < 0 else ".".join(map(str, release))


def serializer_of(path: Path) -> tuple[str, str]:
    s = blackbox.inspect(path)["serializer"]
    return s["name"], s["version"]


def with_serializer_version(version: str):
    def edit(m):
        m["serializer"]["version"] = version
        m["requirements"][m["serializer"]["name"]] = version
    return edit


# What each serializer difference does. "saved newer" means the server has the older release.
# dill's maintainer keeps old pickles loading in newer releases (uqfoundation/dill#270, #608:
# dill._shims); cloudpickle promises nothing across versions (its README; cloudpipe/cloudpickle#414).
POLICY = {
    ("patch", +1): {"dill": "warned", "cloudpickle": "warned"},    # the server has an older patch
    ("patch", -1): {"dill": "warned", "cloudpickle": "warned"},    # a newer patch (3.1.2 -> 3.1.3)
    ("feature", +1): {"dill": "refused", "cloudpickle": "refused"},  # an older minor: never promised
    ("feature", -1): {"dill": "warned", "cloudpickle": "refused"},   # a newer minor
    ("series", +1): {"dill": "refused", "cloudpickle": "refused"},
    ("series", -1): {"dill": "refused", "cloudpickle": "refused"},
}


@pytest.mark.parametrize("level, step", list(POLICY))
def test_serializer_differences_follow_what_the_library_promises(saved, tmp_path, level, step):
    name, installed = serializer_of(saved)
    fake = changed(installed, level, step)
    if fake is None:
        pytest.skip(f"{name} {installed} has no release one {level} below")
    path = rewrite(saved, tmp_path / "other.bbx", with_serializer_version(fake))
    result, text = outcome(path)
    assert result == POLICY[(level, step)][name], text
    if result == "refused":
        assert f"{name} {fake} saved it, {installed} is installed" in text
    else:
        assert f"{name} {installed} is installed but the artifact was saved with {fake}" in text
        strict, text = outcome(path, strict=True)
        assert strict == "refused" and f"{name} {fake} saved it" in text


def test_the_reported_case_a_newer_cloudpickle_patch_loads_with_a_warning(saved, tmp_path):
    """Issue #17: saved with cloudpickle 3.1.2, loaded where pip resolved 3.1.3."""
    name, installed = serializer_of(saved)
    older = changed(blackbox.inspect(saved)["requirements"]["cloudpickle"], "patch", -1)
    if older is None:
        pytest.skip("the installed cloudpickle is an x.y.0 release")

    def edit(m):
        m["requirements"]["cloudpickle"] = older
        if name == "cloudpickle":
            m["serializer"]["version"] = older

    result, text = outcome(rewrite(saved, tmp_path / "older-patch.bbx", edit))
    assert result == "warned" and "cloudpickle" in text, text


def test_cloudpickle_in_a_dill_payload_is_judged_as_a_serializer(saved, tmp_path):
    """dill payloads call cloudpickle's reconstructors, so cloudpickle's rule applies to them too."""
    if serializer_of(saved)[0] != "dill":
        pytest.skip("the cloudpickle artifact is covered above")
    installed = blackbox.inspect(saved)["requirements"]["cloudpickle"]
    older_minor = changed(installed, "feature", -1) or changed(installed, "feature", +1)

    def edit(m):
        m["requirements"]["cloudpickle"] = older_minor

    result, text = outcome(rewrite(saved, tmp_path / "cp-minor.bbx", edit))
    assert result == "refused" and f"cloudpickle {older_minor} saved it" in text, text


def test_a_patch_difference_of_a_requirement_warns_and_strict_refuses(saved, tmp_path):
    installed = blackbox.inspect(saved)["requirements"]["numpy"]
    other = changed(installed, "patch", +1)

    def edit(m):
        m["requirements"]["numpy"] = other

    path = rewrite(saved, tmp_path / "numpy.bbx", edit)
    result, text = outcome(path)
    assert result == "warned" and f"numpy {installed} is installed but the artifact was saved with {other}" in text
    assert f"install numpy=={other} (`blackbox requirements ARTIFACT`" in text
    assert outcome(path, strict=True)[0] == "refused"


def test_python_micro_warns_python_minor_and_implementation_refuse(saved, tmp_path):
    major, minor, micro = sys.version_info[:3]

    def python(version: str, implementation: str = "CPython"):
        def edit(m):
            m["python"] = {"version": version, "implementation": implementation}
        return edit

    micro_path = rewrite(saved, tmp_path / "micro.bbx", python(f"{major}.{minor}.{micro + 1}"))
    result, text = outcome(micro_path)
    assert result == "warned" and f"saved with {major}.{minor}.{micro + 1}" in text, text
    assert f"run it on Python {major}.{minor}.{micro + 1}" in text and "==" not in text  # not a pip pin for Python
    assert outcome(micro_path, strict=True)[0] == "refused"
    result, text = outcome(rewrite(saved, tmp_path / "minor.bbx", python(f"{major}.{minor + 1}.0")))
    assert result == "refused" and f"Python {major}.{minor + 1}.0 saved it" in text
    result, text = outcome(rewrite(saved, tmp_path / "pypy.bbx", python(f"{major}.{minor}.{micro}", "PyPy")))
    assert result == "refused" and "PyPy" in text


def test_a_tolerated_difference_still_needs_the_golden_sample(saved, tmp_path):
    """The self-test is the proof: a difference that changes predictions is refused at load."""
    name, installed = serializer_of(saved)
    other = changed(installed, "patch", +1)

    def edit(m):
        with_serializer_version(other)(m)
        m["golden"]["predictions"] = [1 - p for p in m["golden"]["predictions"]]

    result, text = outcome(rewrite(saved, tmp_path / "drifted.bbx", edit))
    assert result == "refused", text
    assert f"{name} {other} saved it, {installed} is installed" in text and "golden sample" in text
    assert "blackbox requirements" in text


def test_each_difference_warns_once_per_load(saved, tmp_path):
    name, installed = serializer_of(saved)
    path = rewrite(saved, tmp_path / "patch.bbx", with_serializer_version(changed(installed, "patch", +1)))
    result, text = outcome(path)
    assert result == "warned" and len(text.splitlines()) == 1, text


# -- blackbox requirements ------------------------------------------------------------


def parse_requirements(text: str) -> tuple[dict[str, str], list[str]]:
    """(name -> pinned version, the other requirement lines), comments dropped."""
    pins, others = {}, []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        if sep:
            pins[name] = version
        else:
            others.append(line)
    return pins, others


def test_requirements_are_what_the_artifact_was_saved_with_plus_this_checkout(saved, capsys):
    assert blackbox_cli(["requirements", str(saved)]) == 0
    pins, others = parse_requirements(capsys.readouterr().out)
    manifest = blackbox.inspect(saved)
    assert pins == manifest["requirements"]
    assert pins[manifest["serializer"]["name"]] == manifest["serializer"]["version"]
    # The dev venv has blackbox installed (editable) from this checkout: pin the checkout, never
    # `blackbox==0.1.0`, which a package index resolves to another project of that name.
    assert others == [f"blackbox @ {ROOT.as_uri()}"]


def test_requirements_take_another_blackbox_source(saved, capsys):
    spec = "blackbox @ git+https://git.example.com/blackbox@v0.1.0"
    assert blackbox_cli(["requirements", str(saved), "--blackbox", spec]) == 0
    assert parse_requirements(capsys.readouterr().out)[1] == [spec]


def test_requirements_unpickle_nothing_and_need_a_trusted_signature(saved, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    swapped = rewrite(saved, tmp_path / "swapped.bbx", lambda m: None, payload=marker_payload(marker))
    assert blackbox_cli(["requirements", str(swapped)]) == 0
    assert not marker.exists()
    capsys.readouterr()
    unsigned = tmp_path / "unsigned.bbx"
    parts = unpack(saved.read_bytes())
    from blackbox.artifact import pack

    unsigned.write_bytes(pack(parts.manifest_bytes, parts.payload, b""))
    assert blackbox_cli(["requirements", str(unsigned)]) == 4
    assert "unsigned" in capsys.readouterr().err
    assert blackbox_cli(["requirements", str(unsigned), "--allow-unsigned"]) == 0


@pytest.mark.parametrize("direct_url, expected", [
    (None, "blackbox==0.1.0"),
    ('{"url": "https://files.example.com/blackbox-0.1.0.whl", "archive_info": {}}',
     "blackbox @ https://files.example.com/blackbox-0.1.0.whl"),
    ('{"url": "file:///srv/src/blackbox", "dir_info": {"editable": true}}', "blackbox @ file:///srv/src/blackbox"),
    ('{"url": "file:///srv/src/blackbox", "dir_info": {}}', "blackbox @ file:///srv/src/blackbox"),
    ('{"url": "https://git.example.com/blackbox.git", "vcs_info": {"vcs": "git", "commit_id": "abc123"}}',
     "blackbox @ git+https://git.example.com/blackbox.git@abc123"),
    ('{"url": "file:///tmp/blackbox-0.1.0-py3-none-any.whl", "archive_info": {}}',
     "blackbox @ file:///tmp/blackbox-0.1.0-py3-none-any.whl"),
])
def test_blackbox_is_pinned_where_it_was_installed_from(direct_url, expected):
    assert environment.blackbox_requirement("0.1.0", direct_url) == expected


def test_the_requirements_file_names_the_python_it_needs(saved, capsys):
    assert blackbox_cli(["requirements", str(saved)]) == 0
    python = blackbox.inspect(saved)["python"]["version"]
    major_minor = ".".join(python.split(".")[:2])
    assert f"python{major_minor} -m venv" in capsys.readouterr().out


def test_requirements_write_a_file_with_out(saved, tmp_path, capsys):
    assert blackbox_cli(["requirements", str(saved)]) == 0
    printed = capsys.readouterr().out
    target = tmp_path / "serving-requirements.txt"
    assert blackbox_cli(["requirements", str(saved), "-o", str(target)]) == 0
    assert target.read_text() == printed and capsys.readouterr().out == ""
