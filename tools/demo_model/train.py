#!/usr/bin/env python3
"""Trains expertd's demo model: a byte-level BPE tokenizer and a small OLMoE-architecture MoE on
the public-domain Bibles that corpus.py extracts, on the CPU, with a fixed seed.

Writes into --out: tokenizer.json, tokenizer_config.json, config.json, generation_config.json,
model.safetensors (bf16) and, into --log-dir, loss.csv (the loss curve) and train.json (budget,
held-out loss, versions, command). See tools/demo_model/README.md.
"""
import argparse
import csv
import json
import math
import os
import platform
import sys
import time

import torch
import tokenizers
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL = ["<|endoftext|>", "<|padding|>"]


def train_tokenizer(train_path, vocab_size):
    """GPT-NeoX/OLMoE configuration: ByteLevel pre-tokenizer with its regex, no normalizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train([train_path], trainer)
    return tok


def encode_file(tok, path):
    """The whole file as one token stream; lines (verses) joined by their newlines."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    ids = []
    for enc in tok.encode_batch(lines, add_special_tokens=False):
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.long)


class Schedule:
    """The learning rate: linear warm-up, then a cosine from lr to 0.1 x lr over the training's
    progress, the larger of step / steps and (with max_minutes) the share of the wall-clock
    budget spent since start(). Shared by train.py and finetune.py."""

    def __init__(self, args):
        self.args = args
        self.t0 = time.time()

    def start(self):
        self.t0 = time.time()
        return self.t0

    def progress(self, step):
        p = step / self.args.steps
        if self.args.max_minutes > 0:
            p = max(p, (time.time() - self.t0) / (60 * self.args.max_minutes))
        return min(p, 1.0)

    def lr(self, step):
        a = self.args
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * self.progress(step))))


@torch.no_grad()
def evaluate(model, data, seq_len, max_tokens):
    """Mean next-token cross-entropy over consecutive windows of data (up to max_tokens)."""
    model.eval()
    n = min(len(data) - 1, max_tokens) // seq_len
    total, count = 0.0, 0
    for i in range(0, n, 16):
        rows = [data[j * seq_len:(j + 1) * seq_len + 1] for j in range(i, min(n, i + 16))]
        x = torch.stack(rows)
        logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                 x[:, 1:].reshape(-1), reduction="sum")
        total += loss.item()
        count += x[:, 1:].numel()
    model.train()
    return total / count


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, help="directory with train.txt and heldout.txt")
    ap.add_argument("--out", required=True, help="checkpoint directory to write")
    ap.add_argument("--log-dir", required=True, help="where loss.csv and train.json go")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-tokens", type=int, default=16384, help="held-out tokens per periodic eval")
    ap.add_argument("--final-eval-tokens", type=int, default=131072)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="wall-clock budget for the training loop (0: none): the learning-rate "
                         "schedule follows max(step / steps, elapsed / budget) and training stops "
                         "when that reaches 1, so a shared, loaded machine still finishes on time")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.log_dir, exist_ok=True)
    t0 = time.time()

    tok = train_tokenizer(os.path.join(args.data, "train.txt"), args.vocab)
    tok.save(os.path.join(args.out, "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    pad = tok.token_to_id("<|padding|>")
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None,
                   "eos_token": "<|endoftext|>", "pad_token": "<|padding|>",
                   "add_bos_token": False, "model_max_length": 512}, f, indent=2)
        f.write("\n")
    train = encode_file(tok, os.path.join(args.data, "train.txt"))
    held = encode_file(tok, os.path.join(args.data, "heldout.txt"))
    print(f"tokenizer: {tok.get_vocab_size()} tokens; train {len(train)} tokens, "
          f"held-out {len(held)} tokens ({time.time() - t0:.0f}s)", flush=True)

    cfg = transformers.OlmoeConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=args.hidden, intermediate_size=args.ffn,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.heads, max_position_embeddings=512, rope_theta=10000.0,
        num_experts=args.experts, num_experts_per_tok=args.top_k, norm_topk_prob=False,
        router_aux_loss_coef=0.01, output_router_logits=True, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=eos, pad_token_id=pad)
    model = transformers.OlmoeForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters ({2 * n_params / 2**20:.1f} MiB in bf16)", flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)

    sched = Schedule(args)
    progress, lr_at = sched.progress, sched.lr

    gen = torch.Generator().manual_seed(args.seed)
    log = open(os.path.join(args.log_dir, "loss.csv"), "w", newline="")
    w = csv.writer(log)
    w.writerow(["step", "tokens", "seconds", "lr", "train_loss", "aux_loss", "heldout_loss"])
    model.train()
    t_train = sched.start()
    smooth = None
    steps_done = 0
    for step in range(args.steps):
        if step >= args.warmup and progress(step) >= 1.0:
            break
        steps_done = step + 1
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        starts = torch.randint(0, len(train) - args.seq_len - 1, (args.batch,), generator=gen)
        x = torch.stack([train[s:s + args.seq_len + 1] for s in starts.tolist()])
        out = model(input_ids=x[:, :-1])
        logits = out.logits
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                               x[:, 1:].reshape(-1))
        aux = out.aux_loss if out.aux_loss is not None else torch.zeros(())
        loss = ce + cfg.router_aux_loss_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        smooth = ce.item() if smooth is None else 0.9 * smooth + 0.1 * ce.item()
        held_loss = ""
        if (step + 1) % args.eval_every == 0:
            held_loss = f"{evaluate(model, held, args.seq_len, args.eval_tokens):.4f}"
        if step % 10 == 0 or held_loss:
            el = time.time() - t_train
            w.writerow([step + 1, (step + 1) * args.batch * args.seq_len, f"{el:.1f}",
                        f"{lr_at(step):.6f}", f"{ce.item():.4f}", f"{aux.item():.4f}", held_loss])
            log.flush()
            print(f"step {step + 1}/{args.steps} loss {ce.item():.3f} (avg {smooth:.3f}) "
                  f"aux {aux.item():.3f} held {held_loss or '-'} {el:.0f}s", flush=True)
    train_seconds = time.time() - t_train
    w.writerow([steps_done, steps_done * args.batch * args.seq_len, f"{train_seconds:.1f}",
                f"{lr_at(steps_done - 1):.6f}", f"{ce.item():.4f}", f"{aux.item():.4f}", ""])
    final = evaluate(model, held, args.seq_len, args.final_eval_tokens)
    n_eval = min(len(held) - 1, args.final_eval_tokens) // args.seq_len * args.seq_len
    print(f"held-out loss {final:.4f} over {n_eval} tokens after {steps_done} steps", flush=True)
    w.writerow([steps_done, steps_done * args.batch * args.seq_len, f"{train_seconds:.1f}", "",
                "", "", f"{final:.4f}"])
    log.close()

    model.config.output_router_logits = False
    model.to(torch.bfloat16)
    model.generation_config = transformers.GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(args.out)
    info = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "args": vars(args), "parameters": n_params,
            "steps_done": steps_done,
            "train_tokens_seen": steps_done * args.batch * args.seq_len,
            "corpus_train_tokens": len(train), "heldout_tokens": len(held),
            "heldout_loss": round(final, 4), "heldout_eval_tokens": n_eval,
            "train_seconds": round(train_seconds), "total_seconds": round(time.time() - t0),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), no GPU, "
                       f"torch threads {args.threads}",
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__,
                         "tokenizers": tokenizers.__version__}}
    with open(os.path.join(args.log_dir, "train.json"), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
