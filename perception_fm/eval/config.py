"""What the evaluator is told: the topics it reads (EvalTopics), its settings (EvalConfig), and its error."""
from __future__ import annotations

from dataclasses import dataclass, field

from perception_fm.errors import PerceptionFmError

MAX_SAMPLES = 4


class EvalError(PerceptionFmError):
    pass


@dataclass
class EvalTopics:
    # predictions (output bag)
    depth: str = "/depth/image"
    depth_info: str = "/depth/info"
    tf: str = "/tf"
    camera_path: str = "/camera_path"
    instances: str = "/instances"
    rgb: str = "/camera/color/image_raw"
    rgb_compressed: str = "/camera/color/image_raw/compressed"
    camera_info: str = "/camera/color/camera_info"  # intrinsics for the depth F-score's points (either bag)
    # ground truth
    gt_depth: str = "/gt/depth"
    gt_pose: str = "/gt/camera_pose"
    gt_instances: str = "/gt/instances"
    gt_labels: str = "/gt/instance_labels"


@dataclass
class EvalConfig:
    topics: EvalTopics = field(default_factory=EvalTopics)
    estimated_frame: str = "da3_camera"  # child frame of the estimated camera pose on /tf
    world_frame: str = ""  # its parent; "" = whichever frame publishes estimated_frame first
    max_time_diff_s: float = 0.01  # trajectory association (evo's default)
    rpe_delta: int = 1  # frames
    rpe_all_pairs: bool = False
    min_depth: float = 0.0
    max_depth: float | None = None
    depth_modes: tuple[str, ...] | None = None  # None: chosen per frame from DepthInfo
    shift_space: str = "depth"
    iou_threshold: float = 0.5
    samples: int = MAX_SAMPLES
    sample_width: int = 480  # sample images wider than this are downsampled (nearest)
    max_pending: int = 16
    trajectory_metric: bool | None = None  # None: from DepthInfo.is_metric
    fscore_threshold_m: float = 0.05  # depth F-score distance threshold (perception_fm.eval.depth_fscore)
    fscore_max_points: int = 20_000  # per frame and cloud
    pose_auc_thresholds: tuple[int, ...] = (3, 30)  # degrees (perception_fm.eval.pose_auc)
