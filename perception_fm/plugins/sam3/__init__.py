"""SAM 3 (Meta, 2025) as a perception_fm segmentation plugin: open-vocabulary detection of every instance of
a concept plus memory-based tracking, on transformers' Sam3VideoModel.

Weights: `facebook/sam3` on the Hugging Face hub (gated: accept the SAM License on
https://huggingface.co/facebook/sam3, then `hf auth login`), or a local directory as `save_pretrained`
writes it (config.json, model.safetensors, tokenizer files). Nothing torch-related is imported until a model
is created.

ModelOptions.extra (see perception_fm.plugins.sam3.model.Sam3Options): image_size, max_conditioning_frames,
score_threshold, nms_iou, fill_hole_area, precision, concept_batch, object_batch.
"""
from perception_fm.hookspecs import ModelSpec, Task, hookimpl

HUB_ID = "facebook/sam3"
LICENSE = ("SAM License (Meta, custom; free incl. commercial use; redistribution must carry the licence; "
           "no military, nuclear, espionage or weapons use; gated on the hub)")
REQUIRES = ("torch", "transformers", "huggingface_hub", "safetensors", "tokenizers")


def _create(options):
    from perception_fm.plugins.sam3.model import Sam3SegmentationModel

    return Sam3SegmentationModel.from_options(options)


@hookimpl
def register_models():
    return [
        ModelSpec(
            name="sam3",
            task=Task.SEGMENTATION,
            summary="SAM 3: every instance of a text concept (noun phrase), plus click/box prompts, tracked with "
                    "memory (detector + tracker on one ViT-L backbone, ~860 M params)",
            license=LICENSE,
            default_weights=HUB_ID,
            requires=REQUIRES,
            gated=True,
            create=_create,
        )
    ]


@hookimpl
def estimate_memory(task, name, options, workload):
    if Task(task) is not Task.SEGMENTATION or name != "sam3":
        return None
    from perception_fm.plugins.sam3.model import estimate_memory as estimate

    return estimate(options, workload)
