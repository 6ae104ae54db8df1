"""The bundled demo model on another renderer's scenes, and how much its scores mean.

Scenes come from the independent painter of ``tests/independent`` (analytic shapes supersampled in
numpy: its own sizes, shades, backgrounds and edges), which the model never trains on. Reported:
caption exact match and VQA accuracy at 64x64, after JPEG at quality 70, at 37x53 and at 256x256;
retrieval recall and ITM accuracy; accuracy at each turn of five-turn chats, with and without a
system text; and, on harshly perturbed scenes where the model does err, the AUROC of ``score`` for
telling right captions from wrong ones, and how often a caption scored >= 0.9 is right.
Goals (issue "the demo model must know its world"): >= 0.97 captions and VQA at every look,
R@1 >= 0.95 both ways, >= 0.95 at every chat turn, AUROC >= 0.9.

    python benchmarks/demo_generalization.py [--quick] [--scenes 500] [--card]

With ``--card`` the figures are also written into both model cards (``blip2plugins/demo/model/README.md``
and ``retrieval/README.md``), between their "independent painter" markers.
"""

from __future__ import annotations

import random

import _common as c

c.sys.path.insert(0, str(c.ROOT / "tests"))

from independent import painter  # noqa: E402

from blip2plugins.demo import MODEL_DIR  # noqa: E402
from blip2plugins.demo.recipe import CARD_MARKERS, Picture, evaluate, evaluate_chat, host_fns  # noqa: E402
from blip2plugins.demo.retrieval_recipe import load_retrieval, model_fns, retrieval_recall  # noqa: E402
from blip2plugins.host import Host  # noqa: E402

SYSTEM = "You help a labeling team. Reply with a single short answer about the picture."


def perturbed(scene: painter.Scene, rng: random.Random) -> c.Image.Image:
    """One harsh picture of ``scene``: heavy JPEG, strong noise, a tiny or very stretched canvas."""
    harm = rng.choice(["jpeg", "noise", "tiny", "stretched"])
    if harm == "jpeg":
        return painter.jpeg(painter.paint(scene), rng.randint(5, 20))
    if harm == "noise":
        return painter.paint(scene, noise=rng.uniform(25, 45), seed=rng.randrange(1 << 30))
    if harm == "tiny":
        side = rng.randint(16, 24)
        return painter.paint(scene, side, side)
    return painter.paint(scene, 32, 110) if rng.random() < 0.5 else painter.paint(scene, 110, 32)


def auroc(scores: list[float], right: list[bool]) -> float | None:
    """The probability that a right answer scores above a wrong one (ties count half); None
    without both kinds."""
    pos = [s for s, ok in zip(scores, right) if ok]
    neg = [s for s, ok in zip(scores, right) if not ok]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def write_card_section(card: c.Path, text: str) -> None:
    """Replace what stands between the painter markers of the model card ``card`` with ``text``."""
    page = card.read_text()
    start, end = page.index(CARD_MARKERS[0]) + len(CARD_MARKERS[0]), page.index(CARD_MARKERS[1])
    card.write_text(page[:start] + "\n" + text.strip() + "\n" + page[end:])


def markdown(headers: list[str], rows: list[list]) -> str:
    return "\n".join(["| " + " | ".join(map(str, r)) + " |" for r in [headers, ["---"] * len(headers), *rows]])


def main() -> None:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=None, help="painter scenes per measurement (default 500, --quick 60)")
    p.add_argument("--card", action="store_true", help="write the figures into both model cards")
    args = p.parse_args()
    n = args.scenes or (60 if args.quick else 500)
    c.setup(args, f"demo model on the independent painter: {n} scenes")
    scenes = painter.scenes(n, f"benchmark:{args.seed}")
    rows, figures = [], {}
    with Host.load("demo") as host:
        for name, look in painter.LOOKS.items():
            m = evaluate(*host_fns(host), scenes=[Picture(look(s), painter.caption(s), painter.questions(s)) for s in scenes])
            figures[name] = m
            rows.append([name, f"{m['caption_exact_match']:.4f}", f"{m['vqa_accuracy']:.4f}", f"{m['vqa_colour']:.4f}",
                         f"{m['vqa_count']:.4f}", f"{m['vqa_presence']:.4f}"])
        c.table(["look", "caption EM", "VQA", "colour", "count", "presence"], rows)
        plain = [Picture(painter.paint(s), painter.caption(s), painter.questions(s)) for s in scenes]
        chats = {label: evaluate_chat(host, plain[:200], turns=5, seed=args.seed, system=system)
                 for label, system in (("no system text", None), ("system text", SYSTEM))}
        chat_rows = [[label, *(f"{x:.3f}" for x in m["per_turn"]), m["refused"]] for label, m in chats.items()]
        chat_headers = [f"chat ({len(plain[:200])} x 5 turns)", *(f"turn {t + 1}" for t in range(5)), "turns refused"]
        c.table(chat_headers, chat_rows)
        rng = random.Random(args.seed)
        harsh = [(perturbed(s, rng), painter.caption(s)) for s in painter.scenes(n * 2, f"perturbed:{args.seed}")]
        results = host.caption([image for image, _ in harsh])
        right = [r.text == truth for r, (_, truth) in zip(results, harsh)]
        scores = [r.score or 0.0 for r in results]
    sure = [ok for ok, s in zip(right, scores) if s >= 0.9]
    area = auroc(scores, right)
    calibration = {"scenes": len(harsh), "accuracy": sum(right) / len(right), "auroc": area,
                   "sure_share": len(sure) / len(harsh), "sure_right": sum(sure) / len(sure) if sure else None}
    shown = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    print(f"perturbed captions ({len(harsh)}): accuracy {calibration['accuracy']:.3f}; AUROC of score {shown(area)}; "
          f"scored >= 0.9: {calibration['sure_share']:.3f} of them, {shown(calibration['sure_right'])} right")
    fns = model_fns(*load_retrieval(MODEL_DIR / "retrieval"))
    recall = retrieval_recall(fns.image, fns.text, match_fn=fns.match, scenes=plain)
    recall_headers = ["retrieval", "t->i R@1", "t->i R@5", "i->t R@1", "i->t R@5", "ITM acc"]
    recall_rows = [["64x64", *(f"{recall[k]:.4f}" for k in ("text_to_image_r1", "text_to_image_r5", "image_to_text_r1",
                                                             "image_to_text_r5", "itm_accuracy"))]]
    c.table(recall_headers, recall_rows)
    worst = min(min(m["caption_exact_match"], m["vqa_accuracy"]) for m in figures.values())
    worst_turn = min(m["worst_turn"] for m in chats.values())
    met = (worst >= 0.97 and worst_turn >= 0.95 and min(recall["text_to_image_r1"], recall["image_to_text_r1"]) >= 0.95
           and area is not None and area >= 0.9)
    print(f"worst caption/VQA over looks {worst:.3f} (goal >= 0.97), worst chat turn {worst_turn:.3f} (>= 0.95), "
          f"R@1 {min(recall['text_to_image_r1'], recall['image_to_text_r1']):.3f} (>= 0.95), AUROC {shown(area)} "
          f"(>= 0.9) {'PASS' if met else 'FAIL'}")
    if args.card:
        source = (f"{n} scenes of the tests' independent painter (`tests/independent/painter.py`: analytic shapes "
                  "supersampled in numpy, with its own sizes, shades, backgrounds and edges; never trained on), "
                  f"seed {args.seed}. Measured by `python benchmarks/demo_generalization.py --card`.")
        write_card_section(MODEL_DIR / "README.md", "\n\n".join([
            source + " Greedy decoding:",
            markdown(["look", "caption exact match", "VQA", "colour", "count", "presence"], rows),
            "Five-turn chats (questions drawn from the scene's own; the model's answers form the history), "
            f"with and without the system text \"{SYSTEM}\":",
            markdown(chat_headers, chat_rows),
            f"How much `score` means: {len(harsh)} harshly perturbed pictures (JPEG at quality 5-20, noise of "
            "sigma 25-45, 16-24 px canvases, 32x110 stretches), captioned with accuracy "
            f"{calibration['accuracy']:.3f}. The AUROC of `score` for telling right captions from wrong ones is "
            f"{shown(area)}; {calibration['sure_share']:.3f} of the captions score >= 0.9, and "
            f"{shown(calibration['sure_right'])} of those are right."]))
        write_card_section(MODEL_DIR / "retrieval" / "README.md", "\n\n".join([
            source, markdown(recall_headers, recall_rows)]))
        print("wrote the figures into both model cards")

if __name__ == "__main__":
    main()
