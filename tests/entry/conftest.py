"""Fixtures for the entry tests: a small real PickCube image set and a classifier trained on it."""
import pytest

ENV_IMAGE_SIZE = [3, 64, 64]
MODEL = dict(image_size=[3, 32, 32], hidden_dim=16)


def env_overrides():
    return dict(image_size=ENV_IMAGE_SIZE, max_episode_steps=10, collector_env_num=1, evaluator_env_num=1,
                n_evaluator_episode=1)


@pytest.fixture(scope="session")
def pickcube_images(tmp_path_factory):
    """success/ and failure/ PNGs from the real env: motion-planner solutions and random-action episodes."""
    from ding_ext.image_dataset_writer import LabelledImageWriter
    from dizoo_maniskill.config.pickcube_base import ENV
    from dizoo_maniskill.envs.scripted_success import failure_frames, solved_frames
    from entry.experiment_config import env_metadata
    env_cfg = dict(ENV, **env_overrides())
    root = str(tmp_path_factory.mktemp("pickcube_images"))
    writer = LabelledImageWriter(root, 100, 100, 1.0, 1.0, metadata=env_metadata(env_cfg), progress=False)
    for f in solved_frames(6, seed=0, env_cfg=env_cfg) + failure_frames(6, seed=0, env_cfg=env_cfg):
        writer.add(f['image'], f['success'])
    writer.close()
    assert writer.counts == {'success': 6, 'failure': 6}
    return root


@pytest.fixture(scope="session")
def trained_checkpoint(pickcube_images, tmp_path_factory):
    from ding_ext.train_reward_model import train_reward_model
    out = train_reward_model(
        pickcube_images, epochs=3, batch_size=8, val_split=0.25, num_workers=0, progress=False,
        save_dir=str(tmp_path_factory.mktemp("reward_ckpt")), **{f'model.{k}': v for k, v in MODEL.items()}
    )
    return out['best_path']
