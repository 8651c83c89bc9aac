"""``VLMRewardModel`` (``qwen_vl``): a frozen Qwen2-VL / Qwen2.5-VL asked whether a clip shows success.

For each clip it builds one chat turn through the model's own chat template: the ``num_frames`` frames that
``sample_frames`` picks (oldest first, each cropped and resized to ``image_size``) as images, then the question
``format_prompt(task_description)``. The success probability is read from the logits at the first position the model
would generate, softmax over the two answers: p = P(yes) / (P(yes) + P(no)), where an answer with several
spellings (``yes_tokens``, e.g. 'Yes' and 'yes', one token each) sums their probabilities. Clips are scored in batches of
``inference_batch_size`` (left padding, so the last position is every row's first answer position).

Weights come from a local folder only (``model_path``: config, weights, tokenizer and processor files, e.g. from
``huggingface-cli download Qwen/Qwen2-VL-2B-Instruct --local-dir DIR`` on a machine with internet); nothing is ever
downloaded. ``transformers`` is an optional extra (``pip install -e .[vlm]``), imported when a model is built.

The model is frozen: ``cooptrain_reward`` and ``pretrain_reward`` must be false (training a VLM is out of scope), so
``collect_data`` and ``train`` do nothing, as for any frozen reward model; ``save`` writes nothing (the weights stay
in ``model_path``; the run's ``rerun_config.py`` records the config).
"""
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from ding.utils import REWARD_MODEL_REGISTRY

from ..observations import (TaskDescriptions, batch_size, check_task_descriptions, images_from_observations,
                            states_from_observations)
from ..precision import PRECISIONS, resolve_precision
from .base_video_reward_model import BaseVideoRewardModel

logger = logging.getLogger(__name__)

EXTRA_HINT = "pip install -e '.[vlm]' (or pip install transformers)"
DOWNLOAD_HINT = ("download the weights on a machine with internet, e.g. `huggingface-cli download "
                 "Qwen/Qwen2-VL-2B-Instruct --local-dir /models/Qwen2-VL-2B-Instruct`, and set "
                 "reward_model.model_path to that folder")


def import_transformers():
    """``transformers``, with nothing fetched from the hub; a clear error naming the extra when it is missing."""
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    try:
        import transformers
    except ImportError as e:
        raise ImportError(f"the qwen_vl reward model needs the 'vlm' extra (transformers): {EXTRA_HINT}") from e
    return transformers


def check_model_folder(model_path: Optional[str]) -> str:
    """``model_path`` as an existing local model folder, or an error saying what to pass."""
    if not model_path:
        raise ValueError(f"reward_model.model_path is not set: the qwen_vl reward model loads a local model folder; "
                         f"{DOWNLOAD_HINT}")
    path = os.path.expanduser(str(model_path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"reward_model.model_path {model_path!r} is not a local folder (weights are never "
                                f"downloaded); {DOWNLOAD_HINT}")
    if not os.path.isfile(os.path.join(path, 'config.json')):
        raise FileNotFoundError(f"reward_model.model_path {model_path!r} has no config.json: it must be a model "
                                f"folder with config, weights, tokenizer and processor files; {DOWNLOAD_HINT}")
    return path


@REWARD_MODEL_REGISTRY.register('qwen_vl')
class VLMRewardModel(BaseVideoRewardModel):
    """Qwen2-VL / Qwen2.5-VL success judge over clips (see the module docstring); frozen."""

    config = dict(
        BaseVideoRewardModel.config,
        type='qwen_vl',
        # (str) Local folder of a Qwen2-VL or Qwen2.5-VL checkpoint (config.json, weights, tokenizer and processor
        # files, a chat template); required, nothing is downloaded.
        model_path=None,
        # (list) Each frame [3, H, W] as the model sees it (after image_crop); the processor then rounds H and W to
        # its patch grid (multiples of 28 for Qwen2-VL; 224 x 224 gives 64 vision tokens per frame).
        image_size=[3, 224, 224],
        # (bool) Must stay false: the model's processor normalises the frames itself.
        normalize=False,
        # (int) Frames in each incoming clip (the env's reward_frames); 1 = single images.
        clip_length=1,
        # (int) Frames of each clip shown to the model, as that many images in one chat turn.
        num_frames=1,
        # (list) Spellings of the answer 'yes' (each one token of the model's tokenizer); their probabilities add up.
        yes_tokens=['Yes', 'yes'],
        # (list) Spellings of the answer 'no' (each one token of the model's tokenizer).
        no_tokens=['No', 'no'],
        # (str|None) Attention kernel passed to transformers (e.g. 'sdpa', 'eager', 'flash_attention_2'); None =
        # transformers' default.
        attn_implementation='sdpa',
        # (int) Clips per forward pass in estimate() / compute_rewards().
        inference_batch_size=8,
        # (bool) Frozen: must be false (training a VLM is out of scope).
        cooptrain_reward=False,
    )
    needs_checkpoint = False  # the weights come from model_path

    # ------------------------------------------------------------------ config and loading
    def _validate_config(self) -> None:
        if self.cfg.precision == 'int8':
            raise ValueError("precision 'int8' is for the ResNet reward models; the qwen_vl reward model scores in "
                             "fp32, bf16, fp16 or auto")
        super()._validate_config()
        c = self.cfg
        if c.cooptrain_reward or c.pretrain_reward:
            flag = 'cooptrain_reward' if c.cooptrain_reward else 'pretrain_reward'
            raise ValueError(
                f"the qwen_vl reward model is frozen (training a VLM is out of scope), but {flag} is true: run the "
                "entries with cooptrain_reward=False and pretrain_reward=False (ding-reward --no-cooptrain-reward, "
                "or reward_model.cooptrain_reward=False in the config)")
        if c.checkpoint_path:
            raise ValueError(f"reward_model.checkpoint_path={c.checkpoint_path!r}: the qwen_vl reward model loads its "
                             "weights from reward_model.model_path and has no checkpoint; unset checkpoint_path")
        if c.reward_threshold == 'auto':
            raise ValueError("reward_threshold='auto' reads a calibrated checkpoint, which the qwen_vl reward model "
                             "does not have: set a number in [0, 1]")
        if c.normalize:
            raise ValueError("normalize must be false for the qwen_vl reward model: its processor normalises frames")
        for key in ('yes_tokens', 'no_tokens'):
            words = c[key]
            if isinstance(words, str) or not words or not all(isinstance(w, str) and w for w in words):
                raise ValueError(f"{key} must be a non-empty list of answer spellings, got {words!r}")

    def build_network(self) -> nn.Module:
        """Load the processor and the model from ``model_path`` (local files only) in this model's precision."""
        transformers = import_transformers()
        path = check_model_folder(self.cfg.model_path)
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"reward_model.model_path {path!r}: its tokenizer / processor files do not load ({e}); "
                             f"the folder needs them beside the weights; {DOWNLOAD_HINT}") from e
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = 'left'  # the last position of every row is where its answer starts
        if getattr(self.processor, 'chat_template', None) is None and getattr(tokenizer, 'chat_template', None) is None:
            raise ValueError(f"reward_model.model_path {path!r} has no chat template (chat_template.json or "
                             "chat_template.jinja): the prompt is built with the model's own chat format")
        self.yes_token_ids = self._answer_token_ids('yes_tokens', tokenizer, path)
        self.no_token_ids = self._answer_token_ids('no_tokens', tokenizer, path)
        clash = sorted(set(self.yes_token_ids) & set(self.no_token_ids))
        if clash:
            raise ValueError(f"yes_tokens and no_tokens share the token ids {clash}")
        kwargs = dict(local_files_only=True, dtype=self.dtype)
        if self.cfg.attn_implementation:
            kwargs['attn_implementation'] = self.cfg.attn_implementation
        model = transformers.AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        model.eval().requires_grad_(False)
        logger.info("qwen_vl reward model: %s (%s, %s) from %s", type(model).__name__, model.config.model_type,
                    self.dtype, path)
        return model

    def _answer_token_ids(self, key: str, tokenizer: Any, path: str) -> List[int]:
        ids = []
        for word in self.cfg[key]:
            pieces = tokenizer.encode(word, add_special_tokens=False)
            unk = getattr(tokenizer, 'unk_token_id', None)
            if len(pieces) != 1 or (unk is not None and pieces[0] == unk):
                raise ValueError(
                    f"{key}: {word!r} is not one token of the tokenizer in {path} (it encodes to {pieces}); the "
                    f"answer is read from a single token's logit: choose spellings that are one token each")
            ids.append(int(pieces[0]))
        return ids

    def network_metadata(self) -> Dict[str, Any]:
        meta = super().network_metadata()
        meta.update(model_path=str(self.cfg.model_path), model_type=self.network.config.model_type,
                    prompt_template=self.cfg.prompt_template, yes_tokens=list(self.cfg.yes_tokens),
                    no_tokens=list(self.cfg.no_tokens))
        return meta

    # ------------------------------------------------------------------ prompts and scores
    def chat_text(self, task_description: Optional[str] = None) -> str:
        """One clip's prompt in the model's chat format: ``num_frames`` images, then ``format_prompt``, then the
        assistant's turn (where the answer's first token is scored)."""
        content = [{'type': 'image'} for _ in range(int(self.cfg.num_frames))]
        content.append({'type': 'text', 'text': self.format_prompt(task_description)})
        messages = [{'role': 'user', 'content': content}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def chat_prompts(self, task_descriptions: TaskDescriptions, n: int) -> List[str]:
        """One chat prompt per clip (``chat_text``) for ``n`` clips: one task description for all, or one each."""
        check_task_descriptions(task_descriptions, n)
        if task_descriptions is None or isinstance(task_descriptions, str):
            return [self.chat_text(task_descriptions)] * n
        tasks = list(task_descriptions)
        texts = {t: self.chat_text(t) for t in set(tasks)}
        return [texts[t] for t in tasks]

    def answer_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """P(yes) from next-token logits [B, vocab]: softmax over the two answers, each answer's spellings summed."""
        logits = logits.float()
        yes = torch.logsumexp(logits[:, self.yes_token_ids], dim=-1)
        no = torch.logsumexp(logits[:, self.no_token_ids], dim=-1)
        return torch.sigmoid(yes - no)  # = exp(yes) / (exp(yes) + exp(no))

    def model_inputs(self, images: Any, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Processor outputs for a batch of clips and their chat prompts, on the model's device."""
        frames = self.preprocess_video(images).float().cpu()  # [B, k, 3, H, W] in [0, 1]
        if len(prompts) != frames.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {frames.shape[0]} clips")
        inputs = self.processor(text=list(prompts), images=[list(clip) for clip in frames], padding=True,
                                return_tensors='pt', do_rescale=False)
        out = {k: v.to(self.device) for k, v in inputs.items() if torch.is_tensor(v)}
        if 'pixel_values' in out:
            out['pixel_values'] = out['pixel_values'].to(self.dtype)
        return out

    def predict_proba(self, images: Any, task_descriptions: TaskDescriptions = None, *,
                      states: Any = None) -> torch.Tensor:
        """Success probability per clip, float32 on CPU; ``task_descriptions`` (one string, or one per clip)
        replaces the configured ``task_description`` in the prompt; ``states`` feed the joint-speed gate."""
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 3:
            images = images[None]  # one HWC filmstrip
        n = batch_size(images)
        if n == 0:
            raise ValueError("empty image batch: no images to score")
        speeds = self.joint_speeds(states, n)
        prompts = self.chat_prompts(task_descriptions, n)
        step = int(self.cfg.inference_batch_size)
        out = []
        with torch.inference_mode():
            for i in range(0, n, step):
                inputs = self.model_inputs(images[i:i + step], prompts[i:i + step])
                logits = self.network(**inputs, logits_to_keep=1).logits[:, -1]
                out.append(self.answer_probability(logits).cpu())
        return self.gate_joint_speed(speeds, self.gate_still(images, torch.cat(out)))

    def compute_rewards(self, images: Any, task_descriptions: TaskDescriptions = None, *,
                        states: Any = None) -> torch.Tensor:
        """Model reward (before combining with the env reward) for a batch of clips."""
        probs = self.predict_proba(images, task_descriptions, states=states)
        self._dump_debug(images, probs)
        return self.apply_threshold(probs)

    def compute_reward(self, observations: Any, task_descriptions: TaskDescriptions = None) -> torch.Tensor:
        """RLinf's call: scaled model reward per clip for an observations dict (``images`` / ``main_images``) or bare
        clips; ``task_descriptions`` (one string, or one per clip) go into the prompts."""
        images = images_from_observations(observations)
        return self.scale_reward(self.compute_rewards(images, task_descriptions,
                                                      states=states_from_observations(observations)))

    def to_device(self, device: Any = None) -> "VLMRewardModel":
        """Move the model to ``device`` in the precision chosen for it there ('auto' may choose another)."""
        if device is None:
            return self
        self.device = torch.device(device)
        precision, reason = resolve_precision(self.cfg.precision, self.device)
        self.precision_choice = dict(precision=precision, reason=reason)
        self.dtype = PRECISIONS[precision]
        self.network.to(device=self.device, dtype=self.dtype)
        return self

    # ------------------------------------------------------------------ frozen: nothing to train, save or load
    def train_step(self, images: Any, labels: torch.Tensor, pos_weight: Optional[float] = None) -> Dict[str, float]:
        raise RuntimeError("the qwen_vl reward model is frozen: it has no training step")

    def save(self, path: Optional[str] = None, name: str = 'best') -> None:
        """Nothing to write: the weights stay in ``model_path`` (DI-engine's pipelines call save(path, name))."""
        return None

    def load(self, path: str) -> Dict[str, Any]:
        raise ValueError(f"the qwen_vl reward model has no checkpoint to load ({path}): its weights come from "
                         "reward_model.model_path")
