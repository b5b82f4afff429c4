"""Issue 18, finding 13: loading a registered version runs its stored
``mmf_many_models.py`` (in ``mmf serve``, ``mmf forecast`` and ``mmf score``), so the
artifact is checked against the sha256 tags recorded at registration before it loads.

Its own module: the serving tests keep a server whose refresher points MLflow's global
tracking URI at their shared registry, while this test uses a fresh store of its own."""

from __future__ import annotations

import logging

import pytest

from forecasting.errors import RegistryError


def test_a_changed_artifact_is_refused_before_its_code_runs(config, lake_root, tmp_path, caplog):
    import mlflow
    from test_registry import make_results, train_version

    from registry import pyfunc
    from training.jobs.score import champion as scoring_champion

    results, _ = make_results()
    run_id, _, mv, decision = train_version(config, results)
    assert decision.promoted
    name, version = config.mlflow.registered_model, str(mv.version)
    hashes = {k: v for k, v in mv.tags.items() if k.startswith(pyfunc.HASH_TAG)}
    assert set(hashes) == {
        "mmf.sha256.MLmodel",
        "mmf.sha256.mmf_many_models.py",
        "mmf.sha256.artifacts/models.parquet",
        "mmf.sha256.code",  # one digest of code/, the packages the model imports
    }
    assert hashes["mmf.sha256.mmf_many_models.py"] == pyfunc._sha256(pyfunc.CODE_FILE)
    assert len(pyfunc.load_version(config, version).unwrap_python_model().series_ids) == 5

    (code,) = [p for p in lake_root.rglob("mmf_many_models.py") if "code" not in p.parts]
    (models,) = lake_root.rglob("models.parquet")
    original_code, original_models = code.read_bytes(), models.read_bytes()
    ran = tmp_path / "ran"
    code.write_bytes(original_code + f"\nopen({str(ran)!r}, 'w').write('pwned')\n".encode())
    with pytest.raises(RegistryError, match=r"mmf_many_models\.py changed") as err:
        pyfunc.load_version(config, version)
    assert not ran.exists()  # refused before the code ran
    assert "refusing to load" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(RegistryError, match="mmf_many_models"):
        pyfunc.load_champion(config)
    with pytest.raises(RegistryError, match="mmf_many_models"):
        scoring_champion(config, version)  # `mmf score` checks its own download too
    # a restarted job that tags the version again does not bless the change
    pyfunc.tag_version(config, version, run_id, results, 3)
    with pytest.raises(RegistryError):
        pyfunc.load_version(config, version)
    assert not ran.exists()

    code.write_bytes(original_code)
    models.write_bytes(original_models[:-8] + b"\0" * 8)
    with pytest.raises(RegistryError, match=r"artifacts/models\.parquet changed"):
        pyfunc.load_version(config, version)
    models.write_bytes(original_models)
    (models.parent / "extra.npz").write_bytes(b"x")
    with pytest.raises(RegistryError, match=r"artifacts/extra\.npz is not recorded"):
        pyfunc.load_version(config, version)
    (models.parent / "extra.npz").unlink()
    assert pyfunc.load_version(config, version) is not None  # restored: loads again

    # a version registered before the hashes were recorded loads, with a warning
    client = mlflow.MlflowClient()
    for key in hashes:
        client.delete_model_version_tag(name, version, key)
    with caplog.at_level(logging.WARNING, logger="registry.pyfunc"):
        assert pyfunc.load_version(config, version) is not None
    assert any("unverified" in rec.getMessage() for rec in caplog.records)
