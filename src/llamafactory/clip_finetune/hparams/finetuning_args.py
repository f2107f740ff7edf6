import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from .optim_args import ClipOptimArguments


@dataclass
class ClipFinetuningArguments(ClipOptimArguments):
    r"""The stage, the task, the method (which parameters train), and the Dassl-compatible optimizer/schedule."""

    stage: Literal["clip"] = field(default="clip", metadata={"help": "Must be `clip` for this stage."})
    clip_task: str = field(
        default="classification",
        metadata={"help": "The task: a name in the task registry (tasks.TASKS): classification, image_to_text."},
    )
    finetuning_type: str = field(
        default="full",
        metadata={"help": "Which parameters train: a name in the method registry (methods.METHODS); docs/methods/."},
    )
    freeze_vision_tower: bool = field(default=False, metadata={"help": "Keep the image tower frozen."})
    freeze_text_tower: bool | None = field(
        default=None,
        metadata={"help": "Keep the text tower frozen (default: true for classification, false for image_to_text)."},
    )
    train_logit_scale: bool = field(
        default=False, metadata={"help": "Learn the logit scale (default: keep the checkpoint's, train and eval)."}
    )
    plot_loss: bool = field(default=False, metadata={"help": "Save the training loss curve."})
    bias_terms: list[str] | None = field(
        default=None, metadata={"help": "bias: only biases whose name contains one of these strings train."}
    )
    bias_terms_exclude: list[str] | None = field(
        default=None, metadata={"help": "bias: biases whose name contains one of these strings do not train."}
    )
    lora_rank: int | None = field(
        default=None, metadata={"help": "lora: rank of the update matrices (default: 8; clip_lora: 2)."}
    )
    lora_alpha: int | None = field(
        default=None, metadata={"help": "lora: scale (default: lora_rank * 2; clip_lora: 1, over sqrt(rank))."}
    )
    lora_dropout: float | None = field(
        default=None, metadata={"help": "lora: dropout on the LoRA input (default: 0; clip_lora: 0.25)."}
    )
    lora_target: str | None = field(
        default=None,
        metadata={
            "help": "lora: comma-separated module names, within the trained towers (default: q_proj,v_proj; "
            "clip_lora: q_proj,k_proj,v_proj)."
        },
    )
    adapter_reduction: int = field(default=4, metadata={"help": "adapter: bottleneck width = projection dim / this."})
    adapter_ratio: float = field(default=0.2, metadata={"help": "adapter: f = ratio * A(f) + (1 - ratio) * f."})
    adapter_target: Literal["vision", "text", "both"] = field(
        default="vision", metadata={"help": "adapter: which tower's projected feature is adapted."}
    )
    coop_n_ctx: int | None = field(
        default=None, metadata={"help": "coop: context vectors (default: 16, or coop_ctx_init's token count)."}
    )
    coop_ctx_init: str | None = field(
        default=None, metadata={"help": "coop: initialize the context from this phrase (e.g. 'a photo of a')."}
    )
    coop_class_specific: bool = field(default=False, metadata={"help": "coop: one context per class (CSC)."})
    coop_class_token_position: Literal["end", "middle", "front"] = field(
        default="end", metadata={"help": "coop: the class name after, inside or before the context."}
    )
    coop_kg_weight: float = field(
        default=0.0,
        metadata={
            "help": "coop: KgCoOp's weight on 1 - mean cosine between the learned and the hand-crafted class text "
            "features (the paper uses 8.0; 0: plain CoOp)."
        },
    )
    prompt_length: int = field(default=5, metadata={"help": "prompt: prompt tokens (per layer when deep)."})
    prompt_deep: bool = field(default=False, metadata={"help": "prompt: new prompts before every layer (VPT-deep)."})
    prompt_dropout: float = field(default=0.0, metadata={"help": "prompt: dropout on the prompts."})
    prompt_project: int | None = field(
        default=None, metadata={"help": "prompt: learn prompts of this width, projected to the hidden width."}
    )
    tip_alpha: float = field(default=1.0, metadata={"help": "tip: weight of the cache logits."})
    tip_beta: float = field(default=1.0, metadata={"help": "tip: sharpness of the cache affinity."})
    tip_augment_epoch: int = field(default=10, metadata={"help": "tip: augmented views averaged into each key."})
    tip_finetune: bool = field(default=False, metadata={"help": "tip: Tip-Adapter-F, learn the keys."})
    tip_search_best: bool = field(default=False, metadata={"help": "tip: grid-search alpha, beta on val_dataset."})
    tip_search_scale: list[float] = field(
        default_factory=lambda: [7.0, 3.0], metadata={"help": "tip: beta, alpha max."}
    )
    tip_search_step: list[int] = field(default_factory=lambda: [200, 20], metadata={"help": "tip: grid sizes."})
    tip_load_cache: bool = field(default=False, metadata={"help": "tip: reuse a compatible cache in tip_cache_dir."})
    tip_fixed_cache: bool = field(
        default=False, metadata={"help": "tip: use the fixed-size cache shared across datasets in tip_cache_dir."}
    )
    tip_cache_size: int = field(default=100, metadata={"help": "tip: slots of the shared fixed-size cache."})
    tip_new_dataset: bool = field(
        default=False, metadata={"help": "tip: add this dataset to the shared cache (false: use it as it is)."}
    )
    tip_cache_dir: str | None = field(default=None, metadata={"help": "tip: where the cache is read (output_dir)."})
    export_merged: bool = field(
        default=False,
        metadata={"help": "lora: also write output_dir/merged, a standalone CLIP checkpoint with LoRA merged in."},
    )
    feature_cache: bool = field(
        default=True,
        metadata={"help": "With a frozen image tower, compute its features once per augmented view, not per epoch."},
    )
    feature_cache_views: int = field(
        default=10, metadata={"help": "Augmented views per training image in the feature cache."}
    )
    classification_loss: Literal["cross_entropy", "contrastive_prompts", "sigmoid"] = field(
        default="cross_entropy",
        metadata={
            "help": "classification: cross-entropy over all classes; FLYP's contrastive loss between each image "
            "and its class prompt, the batch's other pairs being the negatives; or sigmoid, SigLIP's loss one class "
            "against the rest."
        },
    )
    contrastive_negatives: Literal["global", "local"] = field(
        default="global",
        metadata={
            "help": "image_to_text: negatives of every rank (global; open_clip's gathered local loss) or of this "
            "rank's batch only (local). One process: the same."
        },
    )
    contrastive_accumulation_steps: int = field(
        default=1,
        metadata={
            "help": "image_to_text: train one contrastive batch of N x per_device_train_batch_size pairs in N "
            "micro-batches of cached features (GradCache): the gradient of the large batch, a micro-batch's memory."
        },
    )
    wise_ft_alphas: list[float] | None = field(
        default=None,
        metadata={
            "help": "WiSE-FT: after training, evaluate (1 - a) * zero-shot + a * finetuned weights for each a, keep "
            "the best a on val_dataset as the output (pure finetune: output_dir/finetuned). full, bias, lora."
        },
    )
    probe_type: Literal["lpp", "logistic", "zero_shot"] = field(
        default="lpp",
        metadata={
            "help": "linear_probe / lp_ft: the head on the frozen features. lpp: LP++ (text-blended, closed-form "
            "step sizes); logistic: CoOp's lpclip logistic regression, C searched on val_dataset; zero_shot: the "
            "same, started from and regularized toward the zero-shot classifier."
        },
    )
    probe_c: float | None = field(
        default=None,
        metadata={
            "help": "linear_probe / lp_ft: a fixed inverse regularization C for logistic / zero_shot (default: "
            "searched on val_dataset as lpclip does)."
        },
    )
    probe_search_steps: int = field(
        default=8, metadata={"help": "linear_probe / lp_ft: bisection steps of the search for C after its grid."}
    )
    probe_epochs: int = field(default=300, metadata={"help": "linear_probe / lp_ft: full-batch epochs of LP++."})
    probe_views: int = field(
        default=1,
        metadata={"help": "linear_probe / lp_ft: augmented views per training image the head is fitted on."},
    )
    lp_ft: bool = field(
        default=False,
        metadata={
            "help": "LP-FT: fit the linear probe (probe_type) on the frozen features first, then finetune the "
            "method's weights and the head together from it. classification; full, bias, lora, clip_lora."
        },
    )
    hp_search: dict | None = field(
        default=None,
        metadata={
            "help": "Hyper-parameter search with Optuna on val_dataset: {space: {key: {low, high, log} or {choices}}, "
            "n_trials, timeout, seed, pruner: median|none, retrain}; then the best trial's keys are retrained and "
            "evaluated once on eval_dataset. See docs/hp_search.md."
        },
    )
    abs: bool = field(default=False, metadata={"help": "Angle-Based Selection of the layers that keep training."})
    abs_top: bool = field(default=True, metadata={"help": "Keep the largest angles (false: the smallest)."})
    abs_group: bool = field(default=True, metadata={"help": "Keep abs_keep units per name group (false: overall)."})
    abs_group_name: list[str] = field(
        default_factory=lambda: ["k_proj", "v_proj", "q_proj"],
        metadata={"help": "A unit whose name contains the i-th string is in group i; all others in the last group."},
    )
    abs_keep: int = field(default=5, metadata={"help": "Units kept per group (or overall)."})
    abs_warmup_epochs: float | None = field(
        default=None,
        metadata={"help": "Epochs of full training before the selection (default: the schedule's warmup, >= 1)."},
    )

    def __post_init__(self):
        if self.warmup_epochs and not self.epoch_lr_schedule:
            raise ValueError("warmup_epochs belongs to epoch_lr_schedule: true (else use warmup_steps).")
        if self.feature_cache_views < 1:
            raise ValueError(f"feature_cache_views must be at least 1, got {self.feature_cache_views}.")
        if self.abs_keep < 1:
            raise ValueError(f"abs_keep must be at least 1, got {self.abs_keep}.")
        if self.abs_warmup_epochs is not None and self.abs_warmup_epochs <= 0:
            raise ValueError(f"abs_warmup_epochs must be positive, got {self.abs_warmup_epochs}.")


def is_set(args: ClipFinetuningArguments, key: str) -> bool:
    """Whether ``key`` differs from its default (a key set for a method that does not read it is an error)."""
    field = next(f for f in dataclasses.fields(args) if f.name == key)
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    return getattr(args, key) != default
