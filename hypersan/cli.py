"""The `hypersan` command: a thin layer over library functions."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__


def _eval(args) -> int:
    from .data import load_dataset
    from .evaluate import evaluate, parse_subtasks
    from .model import SubtaskAdaptiveNet, default_checkpoint
    from .train import resolve_device

    ckpt = Path(args.checkpoint) if args.checkpoint else default_checkpoint()
    model = SubtaskAdaptiveNet.from_pretrained(ckpt, map_location=resolve_device(args.device))
    cfg = model.config
    data_dir = args.data_dir or cfg.data.data_dir or None
    train_x, _, _ = load_dataset(cfg.data.dataset, "train", data_dir)
    test_x, test_y, _ = load_dataset(cfg.data.dataset, "test", data_dir)
    if args.limit:
        test_x, test_y = test_x[:args.limit], test_y[:args.limit]
    subtasks = parse_subtasks(model, args.subtasks or ["seen", "unseen"], seed=args.seed)
    r = evaluate(model, test_x, test_y, train_x, subtasks, progress=not args.json and sys.stderr.isatty(), seed=args.seed)
    r = {"checkpoint": str(ckpt), **r}
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"checkpoint {ckpt}")
    print(f"dense: acc {r['dense']['acc']:.4f}  mAP {r['dense']['map']:.4f}  MACs {r['dense']['macs']:,}")
    print(f"{'classes':<44} {'seen':>5} {'acc':>7} {'dense':>7} {'mAP':>7} {'dense':>7} {'MACs':>6} {'params':>6}")
    for s in r["subtasks"]:
        name = ",".join(s["classes"])
        name = name if len(name) <= 44 else name[:41] + "..."
        print(f"{name:<44} {str(s['seen']):>5} {s['acc']:7.4f} {s['dense_acc']:7.4f} {s['map']:7.4f} "
              f"{s['dense_map']:7.4f} {s['mac_ratio']:6.3f} {s['param_ratio']:6.3f}")
    return 0


def _train(args) -> int:
    from .config import load_config
    from .train import train

    cfg = load_config(args.config, args.set)
    if args.device:
        cfg.train.device = args.device
    train(cfg, args.out, resume=args.resume, log=lambda m: print(m, flush=True))
    print(f"checkpoint written to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hypersan", description="Subtask-adaptive networks: one base net, pruned per request.")
    p.add_argument("--version", action="version", version=f"hypersan {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a base net jointly with its mask generator")
    t.add_argument("--config", required=True, help="TOML experiment config")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    t.add_argument("--out", required=True, help="checkpoint directory")
    t.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in --out")
    t.add_argument("--device", default=None, help="auto | cpu | cuda[:N] (default: the config's)")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="evaluate subtasks: accuracy, mAP and compute beside the dense net")
    e.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the shipped Fashion-MNIST model)")
    e.add_argument("--subtasks", nargs="+", default=None,
                   help='class lists ("Sneaker,Bag"), seen, unseen, all, or size=K[,n=M] (default: seen unseen)')
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--limit", type=int, default=0, help="use only the first N test images")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--data-dir", default=None)
    e.add_argument("--device", default="auto")
    e.set_defaults(func=_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hypersan` command."""
    from .config import ConfigError
    from .data import DatasetError
    from .io import ArtifactError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DatasetError, ArtifactError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"hypersan {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
