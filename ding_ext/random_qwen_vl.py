"""A Qwen2-VL (or Qwen2.5-VL) with random weights, saved like a real checkpoint folder: the plumbing of
``VLMRewardModel`` (``qwen_vl``) can be tested anywhere (``arch='tiny'``, ``'tiny-qwen2.5'``), and the cost of a
real architecture measured without its weights (``arch='qwen2-vl-2b'``: Qwen2-VL-2B's layer sizes), with nothing
downloaded.

The folder has what ``transformers`` loads a real Qwen2-VL from: ``config.json`` and weights, a byte-level BPE
tokenizer (built here with the ``tokenizers`` library) holding the special tokens the processor and the chat template
need, the real ``Qwen2VLImageProcessor`` / ``Qwen2VLVideoProcessor`` (both families use them), and a chat template
in Qwen's format. Its
answers mean nothing; its scores still depend on every frame and on the prompt.

    python -m ding_ext.random_qwen_vl /tmp/tiny_qwen_vl      # then reward_model.model_path=/tmp/tiny_qwen_vl
"""
import argparse
import os
from typing import Optional

# the special tokens of Qwen2-VL's tokenizer that the processor and the chat template use
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")
# the words the tokenizer learns whole: the answers, the chat roles and the default prompt
VOCABULARY_TEXT = ("Yes yes No no user assistant system You are a helpful assistant. Pick up the cube and move it to "
                   "the goal. Has the task been completed successfully? Answer yes or no.")
# Qwen's chat format: <|im_start|>role\n ... <|im_end|>\n, each image as <|vision_start|><|image_pad|><|vision_end|>
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# layer sizes: text (hidden, mlp, layers, heads, kv heads, rotary sections, vocab) and vision (width, depth, heads)
TINY = dict(family='qwen2_vl', hidden=32, mlp=64, layers=1, heads=2, kv_heads=1, mrope_section=[4, 2, 2],
            rope_theta=1e4, vocab=None, vision_width=32, vision_depth=1, vision_heads=2, vision_mlp=64,
            tie_embeddings=False, initializer_range=0.5, max_pixels=28 * 28 * 16)
ARCHS = {
    # ~100 k parameters; 16 vision tokens per image at most (max_pixels), so tests stay fast; the short rotary
    # wavelength (rope_theta) lets the random scores depend strongly on the images
    'tiny': TINY,
    # the same sizes in the Qwen2.5-VL family (windowed vision attention, SwiGLU vision MLP)
    'tiny-qwen2.5': dict(TINY, family='qwen2_5_vl'),
    # Qwen2-VL-2B-Instruct's sizes (2.2 B parameters), the processor's default resolution limits
    'qwen2-vl-2b': dict(family='qwen2_vl', hidden=1536, mlp=8960, layers=28, heads=12, kv_heads=2,
                        mrope_section=[16, 24, 24], rope_theta=1e6, vocab=151936, vision_width=1280, vision_depth=32,
                        vision_heads=16, vision_mlp=5120, tie_embeddings=True, initializer_range=0.02,
                        max_pixels=None),
}


def build_tokenizer():
    """A byte-level BPE tokenizer (any text encodes) whose vocabulary has ``SPECIAL_TOKENS`` and the words of
    ``VOCABULARY_TEXT`` as single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([VOCABULARY_TEXT] * 8, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def build_random_qwen_vl(path: str, arch: str = 'tiny', seed: int = 0, dtype: Optional[str] = None,
                         depth_fraction: float = 1.0) -> str:
    """Write a Qwen2-VL or Qwen2.5-VL (``ARCHS[arch]['family']``) with random weights and the layer sizes of
    ``ARCHS[arch]``, its tokenizer and processor, to ``path``; returns ``path``. ``dtype`` ('float32',
    'bfloat16'): the stored weights' type (default float32). ``depth_fraction`` keeps that fraction of the text and
    vision layers (at least one each): a model's compute grows linearly with its depth, so timings of shallower
    copies bound a model too large for the machine."""
    import torch
    import transformers
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    if not 0 < float(depth_fraction) <= 1:
        raise ValueError(f"depth_fraction must lie in (0, 1], got {depth_fraction}")
    a = dict(ARCHS[arch])
    a['layers'] = max(1, round(a['layers'] * float(depth_fraction)))
    a['vision_depth'] = max(1, round(a['vision_depth'] * float(depth_fraction)))
    tokenizer = build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    if a['family'] == 'qwen2_vl':
        names = ('Qwen2VLConfig', 'Qwen2VLForConditionalGeneration', 'Qwen2VLProcessor')
        vision = dict(embed_dim=a['vision_width'], hidden_size=a['hidden'],
                      mlp_ratio=a['vision_mlp'] // a['vision_width'])
    else:
        names = ('Qwen2_5_VLConfig', 'Qwen2_5_VLForConditionalGeneration', 'Qwen2_5_VLProcessor')
        vision = dict(hidden_size=a['vision_width'], out_hidden_size=a['hidden'], intermediate_size=a['vision_mlp'],
                      fullatt_block_indexes=[a['vision_depth'] - 1], window_size=56)
    config_cls, model_cls, processor_cls = (getattr(transformers, n) for n in names)
    config = config_cls(
        text_config=dict(
            vocab_size=a['vocab'] or len(tokenizer), hidden_size=a['hidden'], intermediate_size=a['mlp'],
            num_hidden_layers=a['layers'], num_attention_heads=a['heads'], num_key_value_heads=a['kv_heads'],
            max_position_embeddings=32768, initializer_range=a['initializer_range'],
            rope_parameters=dict(rope_type='default', rope_theta=a['rope_theta'], mrope_section=a['mrope_section']),
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(vision, depth=a['vision_depth'], num_heads=a['vision_heads'],
                           initializer_range=a['initializer_range']),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=a['tie_embeddings'],
    )
    torch.manual_seed(seed)
    # built directly in the stored type: a 2B model in float32 alone takes 9 GB
    model = model_cls._from_config(config, dtype=getattr(torch, dtype or 'float32')).eval()
    pixels = {} if a['max_pixels'] is None else dict(max_pixels=int(a['max_pixels']))
    processor = processor_cls(image_processor=transformers.Qwen2VLImageProcessor(**pixels),
                              video_processor=transformers.Qwen2VLVideoProcessor(), tokenizer=tokenizer,
                              chat_template=CHAT_TEMPLATE)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('path', help='folder to write the model to')
    p.add_argument('--arch', default='tiny', choices=sorted(ARCHS))
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--dtype', default=None, choices=['float32', 'bfloat16'])
    p.add_argument('--depth-fraction', type=float, default=1.0)
    args = p.parse_args(argv)
    print(build_random_qwen_vl(args.path, args.arch, args.seed, args.dtype, args.depth_fraction))


if __name__ == '__main__':
    main()
