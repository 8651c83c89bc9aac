from setuptools import find_packages, setup

setup(
    name="ding-image-reward",
    version="0.1.0",
    description="Learned image success rewards for robot RL in DI-engine (ResNet classifier, ManiSkill3 and Franka envs)",
    python_requires=">=3.9",
    packages=find_packages(include=["ding_ext*", "dizoo_maniskill*", "dizoo_franka*", "entry*"]),
    install_requires=[
        "DI-engine==0.5.3",
        "mani-skill==3.0.1",
        "torch>=2.1",
        "torchvision",
        "numpy>=1.24,<2",
        "tensorboard",
        "safetensors",
        "easydict",
        "tqdm",
        "opencv-python",
        "pyyaml",
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout"],
        "franka": ["franky-control"],
        # the qwen_vl reward model (Qwen2-VL / Qwen2.5-VL through transformers, imported only when it is built)
        "vlm": ["transformers>=5.0,<6"],
    },
    entry_points={
        "console_scripts": [
            "ding-train-reward-model=ding_ext.train_reward_model:main",
            "ding-evaluate-reward-model=ding_ext.evaluate_reward_model:main",
            "ding-reward=entry.cli:main",
        ]
    },
)
