"""The module's state in the scene and which of its actions are ready, without MedSegAdaptLib.

The panel needs these before the library's dependencies are installed (its parameter node, its
button states), so this imports neither Qt nor MedSegAdaptLib; the nodes are plain MRML nodes.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MODULE_NAME",
    "SEGMENT_JOBS",
    "STORE_JOBS",
    "PanelInputs",
    "has_prompt",
    "parameter_node",
    "placed_point_count",
    "ready_actions",
    "roi_is_placed",
]

#: The module's name: its parameter node's singleton tag and ModuleName attribute, as Slicer sets them.
MODULE_NAME = "MedSegAdapt"
#: Kinds of long work that write into the fine-tuning store while they run.
STORE_JOBS = ("finetune", "generate")
#: The kinds of long work, each with a start/stop button ('find': a report's candidates, 'candidate': segmenting one,
#: 'repropagate': re-propagating a segment from the user's edits).
JOB_KINDS = ("segment", "suggest", "finetune", "generate", "find", "candidate", "repropagate")
#: Kinds of long work that write segments into the segmentation.
SEGMENT_JOBS = ("segment", "candidate", "repropagate")


def parameter_node(scene, defaults: dict[str, str] | None = None):
    """The module's parameter node in ``scene`` (a singleton ``vtkMRMLScriptedModuleNode``, found or
    added as Slicer's ScriptedLoadableModuleLogic does), with ``defaults`` written for the
    parameters this scene has not set yet: a new scene takes the Settings' default device, a scene
    that chose its own device keeps it."""
    node = scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)  # owned by the Python variable
        node.SetSingletonTag(MODULE_NAME)
        node.SetName(scene.GenerateUniqueName(MODULE_NAME))
        node.SetAttribute("ModuleName", MODULE_NAME)
        node = scene.AddNode(node)
    elif node.GetAttribute("ModuleName") != MODULE_NAME:
        node.SetAttribute("ModuleName", MODULE_NAME)
    for name, value in (defaults or {}).items():
        if not node.GetParameter(name):
            node.SetParameter(name, str(value))
    return node


def roi_is_placed(roi_node) -> bool:
    """Whether a markups ROI has been placed (a "Create new" ROI has no control point until it is)."""
    return roi_node is not None and roi_node.GetNumberOfDefinedControlPoints() > 0


def placed_point_count(points_node) -> int:
    """The number of placed control points of a markups point list (0 for None)."""
    return 0 if points_node is None else points_node.GetNumberOfDefinedControlPoints()


def has_prompt(roi_node=None, points_node=None) -> bool:
    """Whether a placed ROI or at least one placed foreground point is there to prompt the model."""
    return roi_is_placed(roi_node) or placed_point_count(points_node) > 0


@dataclass
class PanelInputs:
    """What the panel's buttons depend on (nodes from the parameter node, texts from the widgets)."""

    volume: object = None
    segmentation: object = None
    roi: object = None
    points: object = None
    structure: str = ""
    report: str = ""
    prompt_free: bool = False  # a fine-tuned checkpoint is set: it may segment without a prompt
    store_path: str = ""
    case_id: str = ""
    annotator: str = ""
    correction_segment: str = ""
    environment: str = ""
    review_selected: bool = False
    candidate_selected: bool = False  # a row of the report's candidate table is selected
    reviewer: str = ""
    running: str | None = None  # the kind of long work running, if any


def ready_actions(inputs: PanelInputs) -> dict[str, tuple[bool, str]]:
    """{action: (enabled, tooltip)} for the job buttons (segment, suggest, finetune, generate, find, candidate,
    repropagate; the running one stays enabled: it stops the work) and for submit, preview, accept and reject."""
    named = bool(inputs.structure.strip() or inputs.report.strip())
    prompted = has_prompt(inputs.roi, inputs.points) or inputs.prompt_free
    store = bool(inputs.store_path.strip())
    checks = {
        "segment": (bool(inputs.volume and inputs.segmentation and prompted and named),
                    "Segment the structure.",
                    "Select a volume, a segmentation, a structure (or a report) and place an ROI or points."),
        "suggest": (bool(inputs.volume and inputs.structure.strip()),
                    "Rank the slices of the volume to correct next (slices annotated in the store are skipped).",
                    "Select a volume and a structure."),
        "finetune": (store, "Fine-tune the model on the store's corrections and accepted labels.",
                     "Choose the fine-tuning store folder (Corrections)."),
        "generate": (store and bool(inputs.environment),
                     "Simulate samples of the environment from the store's corrected cases; self-validated "
                     "ones train, doubtful ones join the review queue.",
                     "Choose the fine-tuning store folder (Corrections)."),
        "find": (bool(inputs.volume and inputs.report.strip()),
                 "Find what the report describes in the volume and rank the candidates (no ROI needed).",
                 "Select a volume and paste a report (or type a query such as 'right upper lobe nodule, 14 mm')."),
        "candidate": (bool(inputs.volume and inputs.segmentation and inputs.candidate_selected),
                      "Segment the selected candidate into a new segment (the others are kept).",
                      "Select a volume and a segmentation, Find the report's candidates and select one."),
        "repropagate": (bool(inputs.volume and inputs.segmentation and inputs.correction_segment),
                        ("Re-propagate the segment from the slices you edited since the model's result: they are "
                         "kept exactly as drawn (a cleared slice bounds the structure), every other slice is "
                         "segmented again from them. Undo in the Segment Editor brings the edited segment back."),
                        "Select a volume, a segmentation and the model's segment you corrected (Segment)."),
    }
    actions = {}
    for kind in JOB_KINDS:
        ok, ready, missing = checks[kind]
        if inputs.running == kind:
            actions[kind] = (True, "Stop the running work.")
        elif inputs.running is not None:
            actions[kind] = (False, "Wait for the running work to finish, or stop it.")
        else:
            actions[kind] = (ok, ready if ok else missing)
    store_busy = inputs.running in STORE_JOBS
    busy_tip = "Wait until fine-tuning or sample generation, which use the store, finish or are stopped."
    submit = bool(inputs.volume and inputs.segmentation and store and inputs.case_id.strip()
                  and inputs.annotator.strip() and inputs.correction_segment)
    if store_busy:
        actions["submit"] = (False, busy_tip)
    elif inputs.running in SEGMENT_JOBS:
        actions["submit"] = (False, "Wait for the segmentation to finish.")
    else:
        actions["submit"] = (submit, "Store the segment as a new version of the case's label." if submit else
                             "Select a volume, a segmentation, a segment, the store, a case id and an annotator.")
    actions["preview"] = (inputs.review_selected, "Show the selected label and its image.")
    review = inputs.review_selected and bool(inputs.reviewer.strip())
    for action in ("accept", "reject"):
        actions[action] = ((False, busy_tip) if store_busy and review else
                           (review, "Record the review." if review else "Select a label and enter the reviewer."))
    return actions
