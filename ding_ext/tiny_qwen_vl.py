"""A tiny Qwen2-VL with random weights, saved like a real checkpoint folder: the plumbing of ``VLMRewardModel``
(``qwen_vl``) can be tested and timed anywhere, without downloading anything.

The folder has what ``transformers`` loads a real Qwen2-VL from: ``config.json`` and weights, a byte-level BPE
tokenizer (built here with the ``tokenizers`` library) holding the special tokens the processor and the chat template
need, the real ``Qwen2VLImageProcessor`` / ``Qwen2VLVideoProcessor``, and a chat template in Qwen's format. Its
answers mean nothing; its scores still depend on every frame and on the prompt.

    python -m ding_ext.tiny_qwen_vl /tmp/tiny_qwen_vl      # then reward_model.model_path=/tmp/tiny_qwen_vl
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


def build_tiny_qwen_vl(path: str, seed: int = 0, hidden_size: int = 32, layers: int = 1,
                       initializer_range: float = 0.5, max_pixels: Optional[int] = 28 * 28 * 16) -> str:
    """Write a random Qwen2-VL (``layers`` text and vision layers of width ``hidden_size``) with its tokenizer and
    processor to ``path``; returns ``path``. ``max_pixels`` caps each image's resolution in the processor (16 vision
    tokens per image by default). A large ``initializer_range`` spreads the random scores over (0, 1)."""
    import torch
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)
    tokenizer = build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    heads = 2
    half_head = hidden_size // heads // 2  # multimodal rotary sections (time, height, width) share the half head
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=1, max_position_embeddings=4096,
            initializer_range=initializer_range,
            rope_parameters=dict(rope_type='default', rope_theta=10000.0,
                                 mrope_section=[half_head - 2 * (half_head // 3), half_head // 3, half_head // 3]),
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=layers, embed_dim=hidden_size, hidden_size=hidden_size, num_heads=heads, mlp_ratio=2,
                           initializer_range=initializer_range),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    pixels = {} if max_pixels is None else dict(max_pixels=int(max_pixels))
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels),
                                 video_processor=Qwen2VLVideoProcessor(), tokenizer=tokenizer,
                                 chat_template=CHAT_TEMPLATE)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('path', help='folder to write the model to')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--hidden-size', type=int, default=32)
    p.add_argument('--layers', type=int, default=1)
    args = p.parse_args(argv)
    print(build_tiny_qwen_vl(args.path, args.seed, args.hidden_size, args.layers))


if __name__ == '__main__':
    main()
