"""A tiny llama-architecture chat model, written by the tests with the `gguf` package and numpy.

2 layers, width 128, a byte-level SentencePiece vocabulary (256 byte tokens, the ChatML control
tokens and a handful of whole-word pieces), the ChatML chat template, and weights chosen so that
it always answers with SENTENCE, whatever it is asked: llama.cpp runs every layer of it for real
(attention, feed-forward, RoPE, sampling, detokenising, streaming), so tests can assert exact text.

How the weights do it: attention and feed-forward write nothing back (their output matrices are
zero), so the last hidden state is the embedding of the current token. Each piece of the sentence
has its own axis in that space and every other token shares axis 0; the output matrix maps axis 0
to the sentence's first piece, each piece's axis to the next piece, and the last to <|im_end|>
(end of generation). The pieces are never produced by tokenising input (no vocabulary entry
could merge towards them), so a prompt's last token is always on axis 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SENTENCE = "The answer is in the sources [1]."
PIECES = ["The", "\u2581answer", "\u2581is", "\u2581in", "\u2581the", "\u2581sources", "\u2581[1]."]

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

WIDTH = 128
LAYERS = 2
HEADS = 4
FFN = 256
CONTEXT = 512


def build(path: Path, *, context: int = CONTEXT, endless: bool = False) -> Path:
    """endless: after the sentence it starts again instead of ending (until max_tokens or the window),
    to keep the model busy for queue, deadline and disconnect tests."""
    import gguf

    tokens: list[bytes] = [b"<unk>", b"<s>", b"</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>".encode())
        types.append(gguf.TokenType.BYTE)
    im_start, im_end = len(tokens), len(tokens) + 1
    tokens += [b"<|im_start|>", b"<|im_end|>"]
    types += [gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    first_piece = len(tokens)
    for piece in PIECES:
        tokens.append(piece.encode())
        types.append(gguf.TokenType.NORMAL)
    vocab = len(tokens)
    pieces = list(range(first_piece, vocab))

    rng = np.random.default_rng(3)
    embedding = np.zeros((vocab, WIDTH), dtype=np.float32)
    embedding[:, 0] = 1.0
    for axis, token in enumerate(pieces, start=1):
        embedding[token] = 0.0
        embedding[token, axis] = 1.0
    output = np.zeros((vocab, WIDTH), dtype=np.float32)
    output[pieces[0], 0] = 2.0
    for axis, token in enumerate(pieces[1:], start=1):
        output[token, axis] = 2.0
    output[pieces[0] if endless else im_end, len(pieces)] = 2.0

    partial = path.with_name(path.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), "llama")
    writer.add_name("vectorhive-tiny-chat")
    writer.add_context_length(context)
    writer.add_embedding_length(WIDTH)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(WIDTH // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types([int(t) for t in types])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(im_end)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHATML)
    assert im_start == 259

    writer.add_tensor("token_embd.weight", embedding)
    writer.add_tensor("output_norm.weight", np.ones(WIDTH, dtype=np.float32))
    writer.add_tensor("output.weight", output)
    for layer in range(LAYERS):
        blk = f"blk.{layer}"
        writer.add_tensor(f"{blk}.attn_norm.weight", np.ones(WIDTH, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v"):
            weights = rng.normal(0, 0.02, (WIDTH, WIDTH)).astype(np.float32)
            writer.add_tensor(f"{blk}.{name}.weight", weights)
        writer.add_tensor(f"{blk}.attn_output.weight", np.zeros((WIDTH, WIDTH), dtype=np.float32))
        writer.add_tensor(f"{blk}.ffn_norm.weight", np.ones(WIDTH, dtype=np.float32))
        writer.add_tensor(f"{blk}.ffn_gate.weight", rng.normal(0, 0.02, (FFN, WIDTH)).astype(np.float32))
        writer.add_tensor(f"{blk}.ffn_up.weight", rng.normal(0, 0.02, (FFN, WIDTH)).astype(np.float32))
        writer.add_tensor(f"{blk}.ffn_down.weight", np.zeros((WIDTH, FFN), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(path)
    return path
