"""The named profiles: what each changes from ``TrainConfig``'s defaults, and why.

``seed`` changes nothing (the defaults are the seed recipe on real COCO). ``demo`` learns the
synthetic shapes from scratch on 2 CPU cores; ``smoke`` is the demo cut to what CI can
afford. ``TrainConfig.seed_recipe()``, ``.demo()``, ``.smoke()`` and ``.from_profile(name)``
build them; this module holds only their values (it imports nothing of seglib).
"""

from __future__ import annotations

from typing import Any

PROFILES = ("seed", "demo", "smoke")

#: The offline demo (``make demo``). Synthetic data at 128 px, no pretrained weights,
#: GroupNorm in the ResNet and FPN (with BatchNorm and batches of 2, mask AP50 stayed near
#: 0.4), proposal and ROI counts cut so a step costs under a second on 2 CPU cores, and AdamW
#: at lr 3e-4 (weight decay 0.05, none on norms and biases) on a cosine schedule after 50
#: warmup steps. AdamW learns the shapes from scratch in half the steps SGD needs (lr 0.02
#: SGD: mask AP50 0.54 after 192 steps on 96 images, AdamW 0.63), and many images seen once or
#: twice teach more than a few seen often (288 AdamW steps: 0.68 on 96 images, 0.80 on 144).
#: The learning curves behind these choices are in docs/benchmarks.md. Synthetic shapes say
#: nothing about COCO.
DEMO: dict[str, Any] = dict(
    data_source="synthetic",
    num_train=144,
    num_val=24,
    num_test=16,
    synthetic_images=170,  # about 85% of synthetic images qualify: 144 of 170
    synthetic_size=128,
    synthetic_heavy_share=0.25,
    weights="none",
    norm="gn",
    m2f_config="tiny",
    trainable_backbone_layers=5,
    min_size=128,
    max_size=128,
    rpn_pre_nms_top_n_train=200,
    rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=200,
    rpn_post_nms_top_n_test=100,
    # Once the model finds objects, every image fills its quarter of positive ROIs, and the
    # mask head's four 3x3 convolutions over them were a third of a CPU step. 24 sampled ROIs
    # (6 positive) and a 7x7 mask grid (14x14 masks) step 1.39x faster than 48 and 14 and keep
    # mask AP50 >= 0.7: 0.75, 0.72, 0.75 over seeds 0-2 against 0.78, 0.74, 0.82. The coarser
    # masks cost mask AP: 0.40 against 0.45 for seed 0 (docs/benchmarks.md).
    box_batch_size_per_image=24,
    mask_pool_size=7,
    # RoIAlign's backward is serial on the CPU and took 29% of a step: one sample per bin
    # side trains 1.25-1.32x faster and learns as well: mask AP50 0.76, 0.73, 0.80 over
    # seeds 0-2 against 0.80, 0.72, 0.83 (docs/benchmarks.md).
    roi_sampling_ratio=1,
    detections_per_img=50,
    # On the CPU at 128 px the mask head dominates inference, and the pool's masks are
    # all predicted: a pool the size of the output keeps the study's cost at inference's.
    postprocess_pool=50,
    optimizer="adamw",
    lr=3e-4,
    weight_decay=0.05,
    lr_schedule="cosine",
    num_epochs=4,
    warmup_iters=50,
    device="cpu",
    amp=False,
    num_workers=0,
    eval_interval=1,
    # last.pt (504 MB with AdamW's moments) after epochs 2 and 4: each save took 0.9-4.5 s of
    # a 30 s epoch on the 2-core AMD EPYC kind, where the VM backs fresh page cache slowly; a
    # run stopped in epoch 3 or 4 resumes from epoch 2 (docs/benchmarks.md).
    checkpoint_interval=2,
    log_interval=4,
    score_thresh=0.5,
    # Notebook 08: half the demo's epochs per contender (144 steps, about 1.5 min each on 2
    # CPU cores), so its 3 seeds x (4 augmentation rows + 2 more data sizes) take about half
    # an hour; `make demo` leaves it out for that reason.
    study_epochs=2,
    study_sizes=(36, 72, 144),
)

#: What ``smoke`` changes from ``DEMO``: 24 training images, 144 steps, about 2 minutes on
#: 2 CPU cores. Enough to learn the synthetic shapes a little (the notebooks' tests require
#: mask AP50 of at least 0.15 on synthetic val; with AdamW it reached 0.40 after 72 steps and
#: 0.46 after 144, where SGD at lr 0.02 had 0.25), not to show a good model: use ``demo`` for
#: that. Notebook 07 compares over the same 12 epochs, so it reuses 03's run.
SMOKE_FROM_DEMO: dict[str, Any] = dict(
    num_train=24,
    num_val=12,
    num_test=8,
    synthetic_images=32,  # 27 qualify for 24 train
    num_epochs=12,
    warmup_iters=20,
    eval_interval=6,
    log_interval=1,
    # Notebook 08 in CI: 2 seeds of 36 steps per contender, sizes 12 and 24.
    study_seeds=2,
    study_epochs=3,
    study_sizes=(12, 24),
)
