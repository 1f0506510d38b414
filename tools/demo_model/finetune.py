#!/usr/bin/env python3
"""Chat-tunes expertd's demo model: continues training models/demo-moe on chat_data.py's
conversations mixed with plain corpus text (so it keeps its corpus), on the CPU, with a fixed seed.

Each batch is half chat windows (128 tokens starting at a conversation's or turn's start, after
an <|endoftext|>) and half random plain-text windows, the same loss as train.py (cross-entropy
plus the router's load-balancing term). The chat text is tokenized as transformers tokenizes a
rendered prompt (whole, special tokens split out), the plain text as train.py does. Held-out
plain and chat losses are measured before and after. Writes the weights (bf16) back to --out
(config.json, generation_config.json, model.safetensors; the tokenizer is unchanged) and
finetune-loss.csv and finetune.json into --log-dir.
"""
import argparse
import csv
import json
import os
import platform
import sys
import time

import torch
import tokenizers
import transformers
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import Schedule, encode_file, evaluate  # noqa: E402


def encode_chat(tok, path, eos):
    """The rendered conversations as one token stream, and the positions that start a turn."""
    with open(path, encoding="utf-8") as f:
        pieces = f.read().split("<|endoftext|>")
    ids = []
    for i, enc in enumerate(tok.encode_batch(pieces, add_special_tokens=False)):
        ids.extend(enc.ids)
        if i + 1 < len(pieces):
            ids.append(eos)
    data = torch.tensor(ids, dtype=torch.long)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), (data == eos).nonzero().flatten() + 1])
    return data, starts


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, help="corpus.py + chat_data.py's output directory")
    ap.add_argument("--model", default="models/demo-moe", help="checkpoint to start from")
    ap.add_argument("--out", default="models/demo-moe", help="checkpoint directory to write")
    ap.add_argument("--log-dir", required=True, help="where finetune-loss.csv and finetune.json go")
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--chat-rows", type=int, default=8, help="rows of each batch from the chat text")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-tokens", type=int, default=8192, help="held-out tokens per periodic eval")
    ap.add_argument("--final-eval-tokens", type=int, default=131072)
    ap.add_argument("--chat-eval-tokens", type=int, default=65536)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-minutes", type=float, default=12,
                    help="wall-clock budget for the training loop (0: none), as in train.py")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.log_dir, exist_ok=True)
    t0 = time.time()
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    train = encode_file(tok, os.path.join(args.data, "train.txt"))
    held = encode_file(tok, os.path.join(args.data, "heldout.txt"))
    chat, chat_starts = encode_chat(tok, os.path.join(args.data, "chat_train.txt"), eos)
    chat_held, _ = encode_chat(tok, os.path.join(args.data, "chat_heldout.txt"), eos)
    chat_starts = chat_starts[chat_starts < len(chat) - args.seq_len - 1]
    print(f"train {len(train)} tokens, chat {len(chat)} tokens ({len(chat_starts)} turn starts), "
          f"held-out {len(held)} + chat {len(chat_held)} tokens ({time.time() - t0:.0f}s)", flush=True)

    model = transformers.OlmoeForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.config.output_router_logits = True
    coef = model.config.router_aux_loss_coef

    def heldout_losses(n_plain, n_chat):
        return (evaluate(model, held, args.seq_len, n_plain),
                evaluate(model, chat_held, args.seq_len, n_chat))

    before = heldout_losses(args.final_eval_tokens, args.chat_eval_tokens)
    print(f"before: held-out plain {before[0]:.4f}, chat {before[1]:.4f} ({time.time() - t0:.0f}s)",
          flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)

    sched = Schedule(args)
    progress, lr_at = sched.progress, sched.lr

    gen = torch.Generator().manual_seed(args.seed)
    log = open(os.path.join(args.log_dir, "finetune-loss.csv"), "w", newline="")
    w = csv.writer(log)
    w.writerow(["step", "tokens", "seconds", "lr", "train_loss", "aux_loss", "heldout_loss",
                "heldout_chat_loss"])
    w.writerow([0, 0, "0.0", "", "", "", f"{before[0]:.4f}", f"{before[1]:.4f}"])
    model.train()
    t_train = sched.start()
    steps_done = 0
    n_plain = args.batch - args.chat_rows
    for step in range(args.steps):
        if step >= args.warmup and progress(step) >= 1.0:
            break
        steps_done = step + 1
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        pick = torch.randint(0, len(chat_starts), (args.chat_rows,), generator=gen)
        plain = torch.randint(0, len(train) - args.seq_len - 1, (n_plain,), generator=gen)
        rows = [chat[s:s + args.seq_len + 1] for s in chat_starts[pick].tolist()]
        rows += [train[s:s + args.seq_len + 1] for s in plain.tolist()]
        x = torch.stack(rows)
        out = model(input_ids=x[:, :-1])
        logits = out.logits
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                               x[:, 1:].reshape(-1))
        aux = out.aux_loss if out.aux_loss is not None else torch.zeros(())
        loss = ce + coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        hp, hc = "", ""
        if (step + 1) % args.eval_every == 0:
            p, c = heldout_losses(args.eval_tokens, args.eval_tokens)
            hp, hc = f"{p:.4f}", f"{c:.4f}"
        if step % 10 == 0 or hp:
            el = time.time() - t_train
            w.writerow([step + 1, (step + 1) * args.batch * args.seq_len, f"{el:.1f}",
                        f"{lr_at(step):.6f}", f"{ce.item():.4f}", f"{aux.item():.4f}", hp, hc])
            log.flush()
            print(f"step {step + 1} loss {ce.item():.3f} aux {aux.item():.3f} held {hp or '-'} "
                  f"chat {hc or '-'} {el:.0f}s", flush=True)
    train_seconds = time.time() - t_train
    after = heldout_losses(args.final_eval_tokens, args.chat_eval_tokens)
    print(f"after {steps_done} steps: held-out plain {after[0]:.4f}, chat {after[1]:.4f}", flush=True)
    w.writerow([steps_done, steps_done * args.batch * args.seq_len, f"{train_seconds:.1f}", "", "",
                "", f"{after[0]:.4f}", f"{after[1]:.4f}"])
    log.close()

    model.config.output_router_logits = False
    model.to(torch.bfloat16)
    model.save_pretrained(args.out)
    n_eval = min(len(held) - 1, args.final_eval_tokens) // args.seq_len * args.seq_len
    n_chat = min(len(chat_held) - 1, args.chat_eval_tokens) // args.seq_len * args.seq_len
    info = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "args": vars(args), "steps_done": steps_done,
            "tokens_seen": steps_done * args.batch * args.seq_len,
            "chat_tokens_seen": steps_done * args.chat_rows * args.seq_len,
            "corpus_train_tokens": len(train), "chat_train_tokens": len(chat),
            "heldout_loss_before": round(before[0], 4), "heldout_loss_after": round(after[0], 4),
            "heldout_eval_tokens": n_eval,
            "heldout_chat_loss_before": round(before[1], 4),
            "heldout_chat_loss_after": round(after[1], 4), "heldout_chat_eval_tokens": n_chat,
            "train_seconds": round(train_seconds), "total_seconds": round(time.time() - t0),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), no GPU, "
                       f"torch threads {args.threads}",
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__,
                         "tokenizers": tokenizers.__version__}}
    with open(os.path.join(args.log_dir, "finetune.json"), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
