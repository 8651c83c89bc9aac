"""ManiSkillEnv and the scripted frame helpers on the real ManiSkill3 PickCube env (CPU physics, CPU
rendering through lavapipe). No mocks.

The first picture a process takes after its renderer comes up costs several seconds (pipeline
compilation); the renderer stays up while any ManiSkill env is alive, so ``warm_renderer`` keeps one
env open for the whole module.
"""
from functools import partial

import gymnasium
import numpy as np
import pytest
from ding.envs import BaseEnvManager, SyncSubprocessEnvManager
from ding.utils import ENV_REGISTRY, deep_merge_dicts
from easydict import EasyDict

from dizoo_maniskill.envs import ManiSkillEnv
from dizoo_maniskill.envs.scripted_success import failure_frames, solved_frames


@pytest.fixture(scope="module", autouse=True)
def warm_renderer():
    env = ManiSkillEnv(dict(reward_render_mode='none'))
    env.reset()
    env.render_reward_image()
    yield env
    env.close()


def make_env(seed=0, dynamic_seed=False, **cfg):
    env = ManiSkillEnv(cfg)
    env.seed(seed, dynamic_seed=dynamic_seed)
    return env


def run_episode(env, actions=None):
    env.reset()
    timesteps = []
    while True:
        action = env.random_action() if actions is None else actions[len(timesteps)]
        timesteps.append(env.step(action))
        if timesteps[-1].done:
            return timesteps


def test_registry_and_config():
    assert ENV_REGISTRY.get('maniskill') is ManiSkillEnv
    cfg = ManiSkillEnv.default_config()
    assert isinstance(cfg, EasyDict) and cfg.env_id == 'PickCube-v1' and cfg.max_episode_steps == 50
    cfg.image_size[1] = 7  # a copy: the class config is untouched
    assert ManiSkillEnv.config['image_size'] == [3, 128, 128]
    cfg = EasyDict(dict(cfg, collector_env_num=3, evaluator_env_num=2))
    assert len(ManiSkillEnv.create_collector_env_cfg(cfg)) == 3
    assert len(ManiSkillEnv.create_evaluator_env_cfg(cfg)) == 2
    with pytest.raises(ValueError):
        ManiSkillEnv(dict(reward_render_mode='sometimes'))
    with pytest.raises(ValueError):
        ManiSkillEnv(dict(image_size=[1, 64, 64]))


def test_reset_step_spaces_close():
    env = make_env(seed=1)
    assert env.action_space.shape == (8, )  # available before the first reset
    obs = env.reset()
    assert obs.dtype == np.float32 and obs.ndim == 1 and obs.shape == env.observation_space.shape
    assert env.observation_space.contains(obs)
    action = env.random_action()
    assert action.dtype == np.float32 and env.action_space.contains(action)
    ts = env.step(action)
    assert ts.obs.shape == obs.shape and ts.obs.dtype == np.float32 and not np.array_equal(ts.obs, obs)
    assert ts.reward.shape == (1, ) and ts.reward.dtype == np.float32 and np.isfinite(ts.reward).all()
    assert ts.done is False
    for key in ('success', 'success_once', 'terminated', 'truncated'):
        assert type(ts.info[key]) is bool
    assert ts.info['episode_len'] == 1 and 'reward_image' not in ts.info
    assert 'PickCube-v1' in repr(env)
    env.close()
    assert env.unwrapped_env is None
    assert env.reset().shape == obs.shape  # re-created after close
    env.close()


def test_episode_end_image_only_on_done_step():
    env = make_env(seed=2, max_episode_steps=10, reward_render_mode='episode_end')
    timesteps = run_episode(env)
    env.close()
    assert len(timesteps) == 10
    assert [('reward_image' in t.info) for t in timesteps] == [False] * 9 + [True]
    last = timesteps[-1]
    assert last.info['truncated'] and not last.info['terminated'] and last.info['episode_len'] == 10
    img = last.info['reward_image']
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8 and img.std() > 5
    assert 'eval_episode_return' not in timesteps[-2].info
    assert last.info['eval_episode_return'] == pytest.approx(sum(float(t.reward[0]) for t in timesteps), rel=1e-5)
    assert last.info['episode_info'] == {'success': 0.0, 'success_once': 0.0}
    assert 'episode_info' not in timesteps[-2].info


def test_every_step_and_none_modes():
    every = make_env(seed=3, max_episode_steps=4, reward_render_mode='every_step')
    steps = run_episode(every)
    every.close()
    assert all(t.info['reward_image'].shape == (128, 128, 3) for t in steps)
    # the arm moves, so consecutive images differ
    assert not np.array_equal(steps[0].info['reward_image'], steps[-1].info['reward_image'])
    # each image comes with its sidecar facts: one episode id, the step, and the facts behind the label
    infos = [t.info['frame_info'] for t in steps]
    assert [i['step'] for i in infos] == [1, 2, 3, 4] and len({i['episode_id'] for i in infos}) == 1
    for i in infos:
        assert i['phase'] == 'approach' and i['cube_goal_dist'] > 0.025 and i['is_obj_placed'] is False
    none = make_env(seed=3, max_episode_steps=4, reward_render_mode='none')
    assert not any('reward_image' in t.info for t in run_episode(none))
    none.close()


def test_image_size_is_honoured():
    env = make_env(seed=4, image_size=[3, 64, 96], max_episode_steps=2)
    img = run_episode(env)[-1].info['reward_image']
    assert img.shape == (64, 96, 3) and img.dtype == np.uint8
    assert env.render_reward_image().shape == (64, 96, 3)
    env.close()


def test_reward_clips_hold_the_last_frames():
    """reward_frames=3, stride 2: each reward image is the frames of steps t-4, t-2, t side by side, the same frames
    a single-frame env renders at those steps; the episode's start frame stands in before step 4; the episode_end
    image is a clip too."""
    kw = dict(seed=5, max_episode_steps=6, image_size=[3, 48, 48], reward_render_mode='every_step')
    actions = np.random.default_rng(0).uniform(-1, 1, (6, 8)).astype(np.float32)
    single_env = make_env(**kw)
    single = [t.info['reward_image'] for t in run_episode(single_env, actions)]
    single_env.close()
    env = make_env(reward_frames=3, reward_frame_stride=2, **kw)
    env.reset()
    start = env._frames.clip()[:, -48:].copy()  # the frame rendered at reset
    clips = [env.step(a).info['reward_image'] for a in actions]
    env.close()
    assert all(c.shape == (48, 144, 3) for c in clips)
    frames = [start] + single  # the frame after step t is single[t - 1]
    for t, clip in enumerate(clips, start=1):
        want = [frames[max(0, t - 4)], frames[max(0, t - 2)], frames[t]]
        for j in range(3):
            assert np.array_equal(clip[:, 48 * j:48 * (j + 1)], want[j]), (t, j)
    end = make_env(reward_frames=2, **dict(kw, reward_render_mode='episode_end'))
    steps = run_episode(end)
    assert 'reward_image' not in steps[0].info and steps[-1].info['reward_image'].shape == (48, 96, 3)
    end.close()


def test_seeding_is_reproducible():
    a, b, c = make_env(seed=11), make_env(seed=11), make_env(seed=12)
    obs_a, obs_b, obs_c = a.reset(), b.reset(), c.reset()
    np.testing.assert_array_equal(obs_a, obs_b)
    assert not np.array_equal(obs_a, obs_c)
    for _ in range(3):
        action = a.random_action()
        np.testing.assert_array_equal(action, b.random_action())
        np.testing.assert_array_equal(a.step(action).obs, b.step(action).obs)
    # without dynamic_seed every reset restarts the same episode, with it episodes differ
    np.testing.assert_array_equal(a.reset(), obs_a)
    d1, d2 = make_env(seed=11, dynamic_seed=True), make_env(seed=11, dynamic_seed=True)
    first, second = d1.reset(), d1.reset()
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(d2.reset(), first)
    np.testing.assert_array_equal(d2.reset(), second)
    for env in (a, b, c, d1, d2):
        env.close()


def test_success_flags_with_replayed_motion_plan():
    """Record the motion planner's actions on the inner env, then replay them through step():
    the env must report success, terminate, and keep success_once after success is lost again."""
    from mani_skill.examples.motionplanning.panda.solutions.pick_cube import solve

    class ActionRecorder(gymnasium.Wrapper):

        def __init__(self, env):
            super().__init__(env)
            self.actions = []

        def step(self, action):
            self.actions.append(np.asarray(action, dtype=np.float32).reshape(-1))
            return self.env.step(action)

    env = make_env(seed=3, control_mode='pd_joint_pos', max_episode_steps=300)
    env.reset()
    recorder = ActionRecorder(env.unwrapped_env)
    assert not isinstance(solve(recorder, seed=3), int)
    timesteps = run_episode(env, recorder.actions)
    successes = [t.info['success'] for t in timesteps]
    assert all(type(s) is bool for s in successes)
    assert successes[-1] and not any(successes[:-1])
    assert [t.info['success_once'] for t in timesteps] == successes
    last = timesteps[-1]
    assert last.info['terminated'] and not last.info['truncated'] and 'reward_image' in last.info
    facts = last.info['frame_info']
    assert facts['phase'] == 'at_goal_static' and facts['cube_goal_dist'] <= 0.025
    assert facts['is_robot_static'] and facts['is_obj_placed'] and facts['step'] == len(timesteps)
    # drive the arm back to its start pose: success is lost, success_once stays
    for _ in range(5):
        ts = env.step(recorder.actions[0])
    assert ts.info['success'] is False and ts.info['success_once'] is True
    # a new episode gets a new id
    env.reset()
    assert env.step(recorder.actions[0]).info.get('frame_info') is None  # episode_end mode: no image mid-episode
    assert env._episode_id != facts['episode_id']
    env.close()


def test_show_goal_site_changes_image():
    images = {}
    for show in (False, True):
        env = make_env(seed=5, show_goal_site=show)
        env.reset()
        images[show] = env.render_reward_image().astype(np.int32)
        env.close()
    changed = np.abs(images[True] - images[False]).sum(-1) > 30
    assert changed.sum() > 10
    # the marker is green: where the images differ, green dominates red in the shown image
    shown = images[True][changed]
    assert (shown[:, 1] > shown[:, 0]).mean() > 0.8


def test_solved_and_failure_frames():
    solved = solved_frames(2, seed=0, env_cfg=dict(image_size=[3, 64, 64]))
    assert len(solved) == 2 and len({f['seed'] for f in solved}) == 2
    for f in solved:
        assert f['success'] is True and f['control_mode'] == 'pd_joint_pos'
        assert f['image'].shape == (64, 64, 3) and f['image'].dtype == np.uint8
    failed = failure_frames(2, seed=0, env_cfg=dict(image_size=[3, 64, 64]), episode_steps=5)
    assert len(failed) == 2
    for f in failed:
        assert f['success'] is False and f['control_mode'] == 'pd_joint_delta_pos'
        assert f['image'].shape == (64, 64, 3) and f['image'].dtype == np.uint8
    assert not np.array_equal(solved[0]['image'], failed[0]['image'])


@pytest.mark.parametrize('manager_cls', [BaseEnvManager, SyncSubprocessEnvManager])
def test_env_managers(manager_cls, warm_renderer):
    if manager_cls is SyncSubprocessEnvManager:
        # a renderer alive in the parent hangs forked children (DI-engine forks on Linux): close it.
        # Kept last in the module for that reason.
        warm_renderer.close()
    env_cfg = dict(max_episode_steps=3, reward_render_mode='episode_end', image_size=[3, 32, 32])
    manager_cfg = deep_merge_dicts(manager_cls.default_config(), EasyDict(dict(episode_num=1, connect_timeout=120)))
    manager = manager_cls([partial(ManiSkillEnv, env_cfg) for _ in range(2)], manager_cfg)
    assert manager.action_space.shape == (8, )
    manager.seed(0)
    manager.launch()
    images = 0
    try:
        for _ in range(3):
            obs = manager.ready_obs
            assert all(np.asarray(o).shape == manager.observation_space.shape for o in obs.values())
            timesteps = manager.step({i: manager.action_space.sample() for i in obs})
            for ts in timesteps.values():
                assert np.asarray(ts.reward).shape == (1, )
                if ts.done:
                    assert np.asarray(ts.info['reward_image']).shape == (32, 32, 3)
                    images += 1
                else:
                    assert 'reward_image' not in ts.info
        assert manager.done  # episode_num=1: both envs finished their episode
    finally:
        manager.close()
    assert images == 2


def test_episodes_run_to_the_time_limit_without_termination_on_success():
    """terminate_on_success=False: the planner's solution reaches success but the episode goes on to max steps."""
    from mani_skill.examples.motionplanning.panda.solutions.pick_cube import solve
    env = make_env(seed=3, control_mode='pd_joint_pos', max_episode_steps=300, terminate_on_success=False)
    env.reset()
    actions = []

    class ActionRecorder(gymnasium.Wrapper):

        def step(self, action):
            actions.append(np.asarray(action, dtype=np.float32).reshape(-1))
            return self.env.step(action)

    assert not isinstance(solve(ActionRecorder(env.unwrapped_env), seed=3), int)
    env.close()
    env = make_env(seed=3, control_mode='pd_joint_pos', max_episode_steps=len(actions) + 5, terminate_on_success=False,
                   reward_mode='sparse')
    env.reset()
    timesteps = [env.step(a) for a in actions]
    assert timesteps[-1].info['success'] and not timesteps[-1].done and not timesteps[-1].info['terminated']
    for _ in range(5):
        ts = env.step(actions[-1])  # hold the last joint targets: still at the goal
        timesteps.append(ts)
    assert ts.done and ts.info['truncated'] and not ts.info['terminated']
    # the sparse reward is the success flag of every step
    assert [float(t.reward[0]) for t in timesteps] == [float(t.info['success']) for t in timesteps]
    env.close()


def test_static_seed_walks_a_fixed_sequence_with_vary_static_seed():
    def first_obs(**cfg):
        env = make_env(seed=7, dynamic_seed=False, reward_render_mode='none', **cfg)
        obs = [env.reset().copy() for _ in range(3)]
        env.seed(7, dynamic_seed=False)  # re-seeding restarts the sequence
        again = env.reset().copy()
        env.close()
        return obs, again

    same, _ = first_obs()
    assert all(np.allclose(o, same[0]) for o in same)  # DI-engine's convention: one initial state
    varied, again = first_obs(vary_static_seed=True)
    assert not np.allclose(varied[0], varied[1]) and not np.allclose(varied[1], varied[2])
    assert np.allclose(again, varied[0])
    assert np.allclose(first_obs(vary_static_seed=True)[0][2], varied[2])  # the same states in every run


def test_reward_camera_pose_and_fov(warm_renderer):
    base = make_env(seed=5, show_goal_site=True, image_size=[3, 64, 64])
    side = make_env(seed=5, show_goal_site=True, image_size=[3, 64, 64],
                    reward_camera_pose=dict(eye=[0.45, 0.25, 0.2], target=[0.0, 0.0, 0.15]), reward_camera_fov=0.9)
    images = []
    for env in (base, side):
        env.reset()
        images.append(env.render_reward_image().astype(np.int32))
        env.close()
    assert images[1].shape == (64, 64, 3) and np.abs(images[0] - images[1]).mean() > 10
    for bad, match in [(dict(reward_camera_pose=dict(eye=[0, 0, 1])), 'reward_camera_pose'),
                       (dict(reward_camera_pose=dict(eye=[0, 0, 1], target=[0, 0, 1])), 'same point'),
                       (dict(reward_camera_fov=4.0), 'reward_camera_fov')]:
        env = make_env(**bad)
        with pytest.raises(ValueError, match=match):
            env.reset()
        env.close()


def test_evaluator_envs_render_no_reward_images():
    cfgs = ManiSkillEnv.create_evaluator_env_cfg(dict(reward_render_mode='every_step', evaluator_env_num=2,
                                                      reward_frames=2))
    assert len(cfgs) == 2 and all(c['reward_render_mode'] == 'none' for c in cfgs)
    env = ManiSkillEnv(cfgs[0])  # a clip env's evaluator copy renders nothing, not even the clip's frames
    assert not env.renders_every_step
    assert ManiSkillEnv.create_collector_env_cfg(dict(reward_render_mode='every_step'))[0]['reward_render_mode'] \
        == 'every_step'


def test_reward_state_is_the_arm_joint_velocities_and_feeds_the_joint_speed_gate():
    """reward_state=True: each reward image's frame_info carries the arm's joint velocities (fingers excluded), whose
    largest magnitude is what ManiSkill's is_static(0.2) compares; a clip model with the joint-speed gate reads them
    from the transitions and scores 0 exactly where the env says the robot moves."""
    from tests.ding_ext.helpers import force_probability
    from tests.ding_ext.test_video_reward_model import make_video_model
    env = make_env(seed=3, max_episode_steps=12, image_size=[3, 32, 32], reward_render_mode='every_step',
                   reward_frames=2, reward_state=True)
    env.reset()
    actions = [np.zeros(8, np.float32)] * 6 + [np.array([1, -1, 1, -1, 1, -1, 1, 0], np.float32)] * 6
    transitions = []
    for a in actions:
        ts = env.step(a)
        transitions.append(dict(reward_image=ts.info['reward_image'], frame_info=ts.info['frame_info'],
                                reward=ts.reward, done=ts.done))
    env.close()
    infos = [t['frame_info'] for t in transitions]
    for f in infos:
        assert len(f['reward_state']) == 7 and all(isinstance(v, float) for v in f['reward_state'])
        assert abs(max(abs(v) for v in f['reward_state']) - f['arm_speed']) < 1e-5
    static = [f['is_robot_static'] for f in infos]
    assert any(static) and not all(static)  # held still, then driven
    model = make_video_model(clip_length=2, num_frames=1, frame_sampling='last', still_joint_speed=0.2,
                             reward_mode='per_step', combine_mode='replace')
    force_probability(model, 0.9)
    rewards = [float(t['reward'].reshape(-1)[0]) for t in model.estimate(transitions)]
    assert rewards == [1.0 if s else 0.0 for s in static]
    plain = make_env(image_size=[3, 32, 32], reward_render_mode='every_step')  # off by default
    plain.reset()
    assert 'reward_state' not in plain.step(np.zeros(8, np.float32)).info['frame_info']
    plain.close()
