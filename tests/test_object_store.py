"""`s3://` datasets against a real S3-protocol server: moto's HTTP server, started here on loopback. What
works against it works against AWS S3, MinIO or GCS's S3 endpoint (docs/data.md): fsspec's s3fs speaks the
protocol, botocore reads the endpoint and credentials from the environment."""

import socket

import numpy as np
import pytest

from envs.collect import CollectConfig, collect
from vla.cli import main
from vla.config import compose, to_object
from vla.data import TrajectoryStore, validate
from vla.models import load_policy
from vla.train import TrainConfig, train


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",  # how one points at MinIO too
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir("vla-data")
        yield f"http://127.0.0.1:{port}"
    server.stop()


def test_collect_into_s3_resume_validate_and_train_from_it(s3_server, tmp_path, capsys):
    import s3fs

    url = "s3://vla-data/push.zarr"
    collect(CollectConfig(episodes=3, out=url, image_size=32, videos=0), progress=False)
    summary = collect(CollectConfig(episodes=5, out=url, image_size=32, videos=0), progress=False)
    assert summary["resumed_from_episode"] == 3 and summary["episodes"] == 5  # appended over HTTP
    fs = s3fs.S3FileSystem()
    assert fs.exists("vla-data/push.zarr/meta/episode_ends/zarr.json")  # the bytes are on the server
    assert not list((tmp_path).iterdir())  # ... and nowhere local

    store = TrajectoryStore(url)
    assert store.num_episodes == 5 and store.meta.image_size == (32, 32)
    local = tmp_path / "local.zarr"
    collect(CollectConfig(episodes=5, out=str(local), image_size=32, videos=0), progress=False)
    np.testing.assert_array_equal(store.load("state"), TrajectoryStore(local).load("state"))  # same seeds
    np.testing.assert_array_equal(store.load("images/top"), TrajectoryStore(local).load("images/top"))
    assert validate(url).ok
    assert main(["data", "validate", url]) == 0
    assert main(["data", "info", url]) == 0 and "push.zarr" in capsys.readouterr().out

    run = tmp_path / "run"
    ckpt = train(
        to_object(
            compose(
                "train",
                [f"data.path={url}", f"out={run}", "data.num_workers=2", "trainer.steps=4",
                 "trainer.batch_size=8", "trainer.checkpoint_every=4", "trainer.val_every=2"],
            ),
            TrainConfig,
        ),
        progress=False,
    )  # fmt: skip
    assert load_policy(ckpt).meta.cameras == ["top"]


def test_s3_errors_name_the_url(s3_server):
    with pytest.raises(FileNotFoundError, match="no Zarr dataset at 's3://vla-data/nothing.zarr'"):
        TrajectoryStore("s3://vla-data/nothing.zarr")
    report = validate("s3://no-such-bucket/x.zarr")
    assert not report.ok and "no Zarr dataset" in report.errors[0].message
