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
#: 0.4), proposal and ROI counts cut so a step costs under a second on 2 CPU cores, and a
#: cosine schedule from lr 0.02 after 50 warmup steps: a constant lr 0.02 collapsed, lr 0.04
#: barely learned. The learning curves behind these choices are in docs/benchmarks.md.
#: Synthetic shapes say nothing about COCO.
DEMO: dict[str, Any] = dict(
    data_source="synthetic",
    num_train=48,
    num_val=24,
    num_test=16,
    synthetic_images=64,  # about 85% of synthetic images qualify: 54 for 48 train
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
    box_batch_size_per_image=64,
    detections_per_img=50,
    # On the CPU at 128 px the mask head dominates inference, and the pool's masks are
    # all predicted: a pool the size of the output keeps the study's cost at inference's.
    postprocess_pool=50,
    lr=0.02,
    lr_schedule="cosine",
    num_epochs=16,
    warmup_iters=50,
    device="cpu",
    amp=False,
    num_workers=0,
    eval_interval=4,
    log_interval=4,
    score_thresh=0.5,
)

#: What ``smoke`` changes from ``DEMO``: 24 training images, 144 steps, about 2 minutes on
#: 2 CPU cores. Enough to learn the synthetic shapes a little (the notebooks' tests require
#: mask AP50 of at least 0.15 on synthetic val; at 96 steps it stayed near 0.1), not to show
#: a good model: use ``demo`` for that.
SMOKE_FROM_DEMO: dict[str, Any] = dict(
    num_train=24,
    num_val=12,
    num_test=8,
    synthetic_images=32,  # 27 qualify for 24 train
    num_epochs=12,
    warmup_iters=20,
    eval_interval=6,
    log_interval=1,
    # Notebook 07 (with the detr extra): after 2 epochs (24 steps) Mask R-CNN scored mask AP 0
    # on every class and bucket, a chart of zeros; after 6 (72 steps), 3.9 and 4.7 in two
    # subsets (AP50 14, 16), its overall and per-bucket bars above 0. The 4 more epochs cost
    # under a minute on 2 idle CPU cores (0.8 s a step); tiny Mask2Former's, 3 s.
    compare_epochs=6,
)
