"""trusted_keys takes what a user would write: a path as str or Path, a key object, a Keyring, or a list of them."""

from __future__ import annotations

from pathlib import Path

import pytest

import blackbox
from blackbox import signing


@pytest.fixture()
def in_key_dir(keys, monkeypatch) -> Path:
    """The working directory holds the test key pair, so a bare file name is a relative path."""
    monkeypatch.chdir(keys["public"].parent)
    monkeypatch.delenv(signing.TRUSTED_KEYS_ENV)  # only what the call passes is trusted
    return keys["public"]


FORMS = ["relative str", "absolute str", "Path", "directory str", "key object", "Keyring", "list of str",
         "tuple of Path", "mixed list"]


def _form(public: Path, form: str) -> object:
    key = signing._load_public_key(public)
    return {
        "relative str": public.name,
        "absolute str": str(public),
        "Path": Path(public.name),
        "directory str": ".",
        "key object": key,
        "Keyring": signing.Keyring.from_paths([public]),
        "list of str": [public.name],
        "tuple of Path": (public,),
        "mixed list": [key, str(public), Path(public.name)],
    }[form]


@pytest.mark.parametrize("form", FORMS)
def test_load_accepts_every_form_of_trusted_keys(saved, in_key_dir, form):
    trusted = _form(in_key_dir, form)
    model = blackbox.load(saved, trusted_keys=trusted)
    model.self_test()
    assert blackbox.inspect(saved, trusted_keys=trusted)["signature"]["valid"]


def test_verify_accepts_a_str_path_and_a_key_object(saved, in_key_dir):
    """blackbox.verify loads in a child in another directory: a relative path must still mean this one."""
    assert blackbox.verify(saved, trusted_keys=in_key_dir.name).ok
    assert blackbox.verify(saved, trusted_keys=signing._load_public_key(in_key_dir)).ok


def test_the_wrong_key_in_any_form_is_refused(saved, in_key_dir, tmp_path):
    _, other = signing.keygen(tmp_path, "other")
    for trusted in (str(other), other, signing._load_public_key(other), [other]):
        with pytest.raises(blackbox.AuthenticityError, match="not among the trusted keys"):
            blackbox.load(saved, trusted_keys=trusted)


def test_something_that_is_not_a_key_is_a_usage_error_naming_what_it_takes(saved, in_key_dir):
    with pytest.raises(blackbox.UsageError, match="trusted_keys takes"):
        blackbox.load(saved, trusted_keys=[42])
    with pytest.raises(blackbox.UsageError, match="Cannot read the trusted key 'missing.pub'"):
        blackbox.load(saved, trusted_keys="missing.pub")
