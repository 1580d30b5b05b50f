"""Build and save a tiny random-init Idefics3 (SmolVLM's architecture) with its processor, offline.

Model hubs are unreachable here, so tests and CPU experiments exercise the real
``from_pretrained`` path on this: a byte-level BPE tokenizer trained on instruction strings, the
PIL Idefics3 image processor (no torchvision) and an ~0.1M-parameter Idefics3 built from a config.
"""

from __future__ import annotations

import os
from pathlib import Path

SPECIAL = [
    "<unk>",
    "<pad>",
    "<|begin_of_text|>",
    "<end_of_utterance>",
    "<image>",
    "<fake_token_around_image>",
    "<global-img>",
]


def save_tiny_idefics3(
    path: str | os.PathLike,
    corpus: list[str] | None = None,
    image_size: int = 64,
    width: int = 32,
    layers: int = 2,
    seed: int = 0,
) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        PreTrainedTokenizerFast,
    )

    corpus = corpus or ["push the red block onto the blue pad", "lift the green cube", "open the drawer"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<|begin_of_text|>",
        additional_special_tokens=SPECIAL[3:],
    )
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4)
    torch.manual_seed(seed)
    config = Idefics3Config(
        vision_config=dict(
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=image_size // 4,
        ),
        text_config=dict(
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
        ),
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = Idefics3ForConditionalGeneration(config).eval()
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
