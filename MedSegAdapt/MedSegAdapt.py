"""MedSegAdapt scripted module for 3D Slicer: segment a structure with a SAM-family model, get the slices
worth correcting, correct them, fine-tune on the corrections.

The only Python file at the top of the module folder: Slicer's scripted-module factory loads every
``*.py`` there as a module. The Qt-free Logic lives in the ``MedSegAdaptLogic`` package beside it
(``logic.MedSegAdaptLogic``, the scene conversions, the worker thread, dependency installation), and
the backend library MedSegAdaptLib is installed with the module (or found in a source checkout).

This file imports nothing that may be missing on a fresh install: MedSegAdaptLib's dependencies
(torch...) are imported only once the panel has checked, and offered to install, them. Model work
runs on one persistent worker thread; the GUI polls it with a QTimer and never touches MRML from
that thread.
"""

# No `from __future__ import annotations` here: @parameterNodeWrapper reads the annotation objects.
import logging
import os
import tempfile
import time
from typing import Annotated, Any, NamedTuple

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MedSegAdaptLogic.library import ensure_library_importable
from MedSegAdaptLogic.state import PanelInputs, parameter_node, ready_actions
from MedSegAdaptLogic.worker import Processing, progress_text

logger = logging.getLogger("MedSegAdapt")

#: The folder holding MedSegAdaptLib (installed beside this file, or the source checkout), or None.
LIBRARY_FOLDER = ensure_library_importable()
LIBRARY_MISSING = ("MedSegAdaptLib, the MedSegAdapt backend, was not found beside the module or in a source "
                   "checkout. Reinstall the MedSegAdapt extension from the Extensions Manager.")

if LIBRARY_FOLDER is not None:
    from MedSegAdaptLib.core.choices import DEVICE_CHOICES, RANKING_PURPOSE_NAMES
else:  # nothing works without the library; the panel says so and the parameter node keeps its defaults
    DEVICE_CHOICES, RANKING_PURPOSE_NAMES = ("auto",), ("training",)

SETTINGS_PREFIX = "MedSegAdapt/"
#: Kinds of long work whose Cancel acts at once (their results are dropped); the others stop at their next step.
ABANDONED_ON_CANCEL = ("segment", "suggest", "find", "candidate", "repropagate")


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
            "get the slices most worth correcting next, with the reason; correct them in the embedded Segment "
            "Editor and submit each correction as a new version of a fine-tuning store; fine-tune the model on "
            "the store (loss and Dice plotted per epoch) and review queued pseudo-labels and synthetic samples."
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
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    replaceSegment: bool = False
    storePath: str = ""
    caseId: str = ""
    annotator: str = ""
    annotatedSlices: str = ""
    # The ranges are the .ui spin boxes' limits: the connector sets the widget's range from them.
    budget: Annotated[int, WithinRange(1, 100)] = 5
    rankFor: Annotated[str, Choice(list(RANKING_PURPOSE_NAMES))] = "training"
    epochs: Annotated[int, WithinRange(1, 1000)] = 10
    priors: str = ""
    semiSupervised: bool = False
    textEncoder: str = ""
    fineTuneOutput: str = ""
    environmentCount: Annotated[int, WithinRange(1, 200)] = 4
    reviewer: str = ""
    trainingTable: slicer.vtkMRMLTableNode
    trainingChart: slicer.vtkMRMLPlotChartNode
    reviewVolume: slicer.vtkMRMLScalarVolumeNode
    reviewSegmentation: slicer.vtkMRMLSegmentationNode


#
# Dependencies
#


def missingDependencies() -> list:
    """(Dependency, installed version or None) of each of MedSegAdaptLib's dependencies not installed (or
    too old); raises RuntimeError when the library itself is missing."""
    if LIBRARY_FOLDER is None:
        raise RuntimeError(LIBRARY_MISSING)
    from MedSegAdaptLib.core.dependencies import missing_dependencies

    return missing_dependencies()


def dependencyInstaller():
    """The installer of MedSegAdaptLib's dependencies into Slicer's Python, with Slicer's dialogs."""
    from MedSegAdaptLogic.dependencies import DependencyInstaller, pytorch_extension_installer

    return DependencyInstaller(
        lambda arguments: slicer.util.pip_install(arguments),
        lambda text: slicer.util.confirmOkCancelDisplay(text, "MedSegAdapt: install dependencies"),
        pytorch_extension_installer())


#
# Widget
#


class MedSegAdaptWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: Inputs, Segment, Suggestions, Corrections (with the Segment Editor), Adapt, Settings.

    ``self.logic`` is the Qt-free ``MedSegAdaptLogic``, created once the dependencies are importable
    (None before).
    """

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._processing = Processing()
        self._jobControls = {}
        self._timer = None
        self._observedSegmentation = None
        self._observedMarkups = []
        self._suggestions = (None, [])
        self._found = None  # the report's candidates shown in the table (MedSegAdaptLogic.ReportFind)
        self._reviewLabels = []
        self.segmentEditorWidget = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSegAdapt.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        settings = qt.QSettings()
        self.ui.defaultDeviceComboBox.addItems(list(DEVICE_CHOICES))
        self.ui.defaultDeviceComboBox.currentText = settings.value(SETTINGS_PREFIX + "device", "auto")
        self.ui.checkpointPathLineEdit.currentPath = settings.value(SETTINGS_PREFIX + "checkpoint", "")
        self._setColumns(self.ui.historyTableWidget,
                         ["Structure", "Version", "Kind", "Status", "Annotator", "Time", "Voxels"])
        self._setColumns(self.ui.suggestionsTableWidget, ["Slice", "Score", "DKD", "ASD", "Reason"])
        self._setColumns(self.ui.candidatesTableWidget, ["Rank", "Score", "Size", "Reason"])
        self._setColumns(self.ui.reviewQueueTableWidget,
                         ["Id", "Case", "Structure", "Version", "Kind", "Submitted by", "Comment"])
        self._addPlaceWidgets()
        self._addSegmentEditor()
        self.show3DButton = qt.QPushButton("Show 3D")
        self.show3DButton.checkable = True
        self.show3DButton.toolTip = "Show the segmentation as surfaces in the 3D view."
        self.ui.segmentCollapsibleButton.layout().addRow(self.show3DButton)

        # One row per kind of long work: its start/stop button, texts, progress bar, status label.
        self._jobControls = {
            "segment": _JobControls(self.ui.applyButton, "Apply", "Cancel", self.ui.progressBar,
                                    self.ui.statusLabel, "Segmentation failed"),
            "suggest": _JobControls(self.ui.suggestButton, "Suggest slices", "Cancel", self.ui.suggestProgressBar,
                                    self.ui.suggestStatusLabel, "Suggesting slices failed"),
            "finetune": _JobControls(self.ui.fineTuneButton, "Start fine-tuning", "Stop fine-tuning",
                                     self.ui.fineTuneProgressBar, self.ui.fineTuneStatusLabel, "Fine-tuning failed"),
            "generate": _JobControls(self.ui.generateSamplesButton, "Generate samples", "Stop generating",
                                     self.ui.generateProgressBar, self.ui.generateStatusLabel,
                                     "Generating samples failed"),
            "find": _JobControls(self.ui.findCandidatesButton, "Find", "Cancel", self.ui.candidateProgressBar,
                                 self.ui.candidateStatusLabel, "Finding the report's candidates failed"),
            "candidate": _JobControls(self.ui.applyCandidateButton, "Apply to candidate", "Cancel",
                                      self.ui.candidateProgressBar, self.ui.candidateStatusLabel,
                                      "Segmenting the candidate failed"),
            "repropagate": _JobControls(self.ui.repropagateButton, "Re-propagate from my edits", "Cancel",
                                        self.ui.repropagateProgressBar, self.ui.repropagateStatusLabel,
                                        "Re-propagating the segment failed"),
        }

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.suggestButton.connect("clicked(bool)", self.onSuggestButton)
        self.ui.suggestionsTableWidget.connect("cellClicked(int,int)", self.onSuggestionClicked)
        self.ui.findCandidatesButton.connect("clicked(bool)", self.onFindCandidates)
        self.ui.candidatesTableWidget.connect("cellClicked(int,int)", self.onCandidateClicked)
        self.ui.candidatesTableWidget.connect("itemSelectionChanged()", self._checkCanApply)
        self.ui.applyCandidateButton.connect("clicked(bool)", self.onApplyCandidate)
        self.ui.repropagateButton.connect("clicked(bool)", self.onRepropagate)
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
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)
        self.ui.checkpointPathLineEdit.connect("currentPathChanged(QString)", self.onSettingsChanged)
        self.ui.defaultDeviceComboBox.connect("currentTextChanged(QString)", self.onDefaultDeviceChanged)
        self.show3DButton.connect("toggled(bool)", self.onShow3D)

        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onPollJob)

        # Filled from the library when its dependencies are there already (no install offered at start-up).
        self._fillLibraryLists()
        self.initializeParameterNode()

    def _addPlaceWidgets(self):
        """Place buttons beside the ROI and point selectors (Markups place mode, one or many points)."""
        self.roiPlaceWidget = slicer.qSlicerMarkupsPlaceWidget()
        self.pointsPlaceWidget = slicer.qSlicerMarkupsPlaceWidget()
        self.backgroundPointsPlaceWidget = slicer.qSlicerMarkupsPlaceWidget()
        row = qt.QHBoxLayout()
        for label, widget, multiple in (("ROI", self.roiPlaceWidget, False), ("points", self.pointsPlaceWidget, True),
                                        ("background", self.backgroundPointsPlaceWidget, True)):
            widget.setMRMLScene(slicer.mrmlScene)
            widget.buttonsVisible = False
            widget.placeButton().show()
            widget.placeMultipleMarkups = (slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups if multiple
                                           else slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup)
            widget.toolTip = f"Place the {label} in the slice views."
            row.addWidget(qt.QLabel(label))
            row.addWidget(widget)
        row.addStretch(1)
        self.ui.inputsCollapsibleButton.layout().addRow("Place:", row)

    def _addSegmentEditor(self):
        """The Segment Editor in the Corrections panel, on the chosen segmentation and volume; its undo
        history also holds the model's edits."""
        self.segmentEditorWidget = slicer.qMRMLSegmentEditorWidget()
        self.segmentEditorWidget.setMaximumNumberOfUndoStates(10)
        self.segmentEditorWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.correctionsCollapsibleButton.layout().addRow(self.segmentEditorWidget)
        self._setSegmentEditorNode()

    def _setSegmentEditorNode(self):
        if self.segmentEditorWidget is None:
            return
        node = slicer.mrmlScene.GetSingletonNode("MedSegAdapt", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag("MedSegAdapt")
            node = slicer.mrmlScene.AddNode(node)
        self.segmentEditorWidget.setMRMLSegmentEditorNode(node)

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

    def _fillLibraryLists(self):
        """Structures and environments from the library, once its dependencies are there. Never raises:
        the panel (Check / install included) must work whatever is missing."""
        if LIBRARY_FOLDER is None:
            self.ui.statusLabel.text = LIBRARY_MISSING
            return
        try:
            from MedSegAdaptLib.io.terminology import standard_names

            if self.ui.structureComboBox.count == 0:
                self.ui.structureComboBox.addItems(list(standard_names()))
            if missingDependencies() or self.ui.environmentComboBox.count:
                return
            from MedSegAdaptLogic.logic import MedSegAdaptLogic

            for entry in MedSegAdaptLogic.environments():
                description = entry["description"] + " (" + ", ".join(
                    f"{key} = {value}" for key, value in entry["parameters"].items()) + ")"
                self.ui.environmentComboBox.addItem(entry["name"])
                self.ui.environmentComboBox.setItemData(self.ui.environmentComboBox.count - 1, description,
                                                        qt.Qt.ToolTipRole)
        except Exception as error:  # shown, not raised: see the docstring
            logger.warning("MedSegAdapt: could not list structures or environments: %s", error)

    # --- parameter node ---------------------------------------------------------------------------

    def cleanup(self):
        self.removeObservers()
        if self._timer is not None:
            self._timer.stop()
        self._processing.shutdown(timeout=1.0)

    def enter(self):
        self.initializeParameterNode()
        if self.segmentEditorWidget is not None:
            self.segmentEditorWidget.installKeyboardShortcuts()

    def exit(self):
        if self.segmentEditorWidget is not None:
            self.segmentEditorWidget.setActiveEffect(None)
            self.segmentEditorWidget.uninstallKeyboardShortcuts()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event):
        # Whatever runs is dropped now: its result must not be written into the nodes being removed.
        if self._processing.busy:
            kind, _ = self._processing.stop(abandon=True)
            self._showStopped(kind, "Stopped: the scene was closed.")
        self.onSegmentationChanged(None)
        self._showSuggestions(None, [])
        self._showCandidates(None)
        if self.logic is not None:
            self.logic.forget_finds()  # the next scene reuses the node ids
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        self._setSegmentEditorNode()
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        # A new scene takes the Settings' default device; a scene that has its own keeps it.
        node = parameter_node(slicer.mrmlScene, {"device": self.ui.defaultDeviceComboBox.currentText})
        self.setParameterNode(MedSegAdaptParameterNode(node))
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self.ui.structureComboBox.currentText = self._parameterNode.structure
            self.ui.reportTextEdit.setPlainText(self._parameterNode.report)
            self.ui.storePathLineEdit.currentPath = self._parameterNode.storePath
            self.ui.fineTuneOutputPathLineEdit.currentPath = self._parameterNode.fineTuneOutput
            self.ui.textEncoderPathLineEdit.currentPath = self._parameterNode.textEncoder
            self.onSegmentationChanged(self._parameterNode.segmentation)
            self.onRefreshReviewQueue()
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None):
        node = self._parameterNode
        if node is None:
            return
        self.roiPlaceWidget.setCurrentNode(node.roi)
        self.pointsPlaceWidget.setCurrentNode(node.points)
        self.backgroundPointsPlaceWidget.setCurrentNode(node.backgroundPoints)
        self._observeMarkups([node.roi, node.points])
        self._checkCanApply()

    def _observeMarkups(self, nodes):
        """Re-check the buttons when a control point of the ROI or the points is placed or removed."""
        events = (slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                  slicer.vtkMRMLMarkupsNode.PointPositionUndefinedEvent, slicer.vtkMRMLMarkupsNode.PointRemovedEvent)
        nodes = [n for n in nodes if n is not None]
        if nodes == self._observedMarkups:
            return
        for old in self._observedMarkups:
            for event in events:
                self.removeObserver(old, event, self._checkCanApply)
        for new in nodes:
            for event in events:
                self.addObserver(new, event, self._checkCanApply)
        self._observedMarkups = nodes

    def _checkCanApply(self, caller=None, event=None):
        node = self._parameterNode
        inputs = PanelInputs(
            structure=self.ui.structureComboBox.currentText, report=self.ui.reportTextEdit.toPlainText(),
            prompt_free=bool(self.ui.checkpointPathLineEdit.currentPath),
            correction_segment=self.ui.correctionSegmentComboBox.currentText,
            environment=self.ui.environmentComboBox.currentText,
            review_selected=self._selectedReviewLabel() is not None,
            candidate_selected=self._selectedCandidate() is not None, running=self._processing.kind)
        if node is not None:
            inputs.volume, inputs.segmentation, inputs.roi, inputs.points = (
                node.inputVolume, node.segmentation, node.roi, node.points)
            inputs.store_path, inputs.case_id, inputs.annotator, inputs.reviewer = (
                node.storePath, node.caseId, node.annotator, node.reviewer)
        actions = ready_actions(inputs)
        for kind, controls in self._jobControls.items():
            enabled, tip = actions[kind]
            controls.button.text = controls.busy if self._processing.kind == kind else controls.idle
            controls.button.enabled, controls.button.toolTip = enabled, tip
        for action, button in (("submit", self.ui.submitCorrectionButton), ("preview", self.ui.previewLabelButton),
                               ("accept", self.ui.acceptLabelButton), ("reject", self.ui.rejectLabelButton)):
            button.enabled, button.toolTip = actions[action]

    def onStructureChanged(self, text):
        if self._parameterNode:
            self._parameterNode.structure = text
        self._checkCanApply()

    def onReportChanged(self):
        if self._parameterNode:
            self._parameterNode.report = self.ui.reportTextEdit.toPlainText()
        if self._found is not None and self._found.request.report != self.ui.reportTextEdit.toPlainText().strip():
            self._showCandidates(None)  # the table is of another report now
            self.ui.candidateStatusLabel.text = "The report changed: press Find for its candidates."
        self._checkCanApply()

    def onStorePathChanged(self, path):
        if self._parameterNode:
            self._parameterNode.storePath = path
        self.onRefreshReviewQueue()
        self._showAdaptResults(path)

    def onFineTuneOutputChanged(self, path):
        if self._parameterNode:
            self._parameterNode.fineTuneOutput = path

    def onTextEncoderChanged(self, path):
        if self._parameterNode:
            self._parameterNode.textEncoder = path

    def onInputVolumeChanged(self, node):
        if self.segmentEditorWidget is not None:
            self.segmentEditorWidget.setSourceVolumeNode(node)
        # The table shows this volume's candidates: those of its last Find when they are of the same report.
        found = self.logic.last_find(node) if self.logic is not None else None
        if found is not None and found.request.report != self.ui.reportTextEdit.toPlainText().strip():
            found = None
        if found is not self._found:
            self._showCandidates(found)
            self.ui.candidateStatusLabel.text = self._candidatesSummary(found) if found is not None else ""

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
        if self.segmentEditorWidget is not None:
            self.segmentEditorWidget.setSegmentationNode(node)
            if self._parameterNode is not None:
                self.segmentEditorWidget.setSourceVolumeNode(self._parameterNode.inputVolume)
        self.show3DButton.checked = bool(node and node.GetSegmentation().ContainsRepresentation(
            slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()))
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

    def onShow3D(self, show):
        node = self._parameterNode.segmentation if self._parameterNode else None
        if node is None:
            return
        if show:
            node.CreateClosedSurfaceRepresentation()
        else:
            node.RemoveClosedSurfaceRepresentation()

    def onSettingsChanged(self, *args):
        settings = qt.QSettings()
        settings.setValue(SETTINGS_PREFIX + "device", self.ui.defaultDeviceComboBox.currentText)
        settings.setValue(SETTINGS_PREFIX + "checkpoint", self.ui.checkpointPathLineEdit.currentPath)
        self._checkCanApply()

    def onDefaultDeviceChanged(self, device):
        """Saved for new scenes, and applied to this one: the user just chose it."""
        self.onSettingsChanged()
        if self._parameterNode and device in DEVICE_CHOICES:
            self._parameterNode.device = device

    # --- dependencies -----------------------------------------------------------------------------

    def _dependenciesReady(self, ask=True) -> bool:
        """True once every dependency is importable and the Logic exists; otherwise offers to install
        what is missing (then a restart) and returns False unless everything works without one."""
        if LIBRARY_FOLDER is None:
            slicer.util.errorDisplay(LIBRARY_MISSING)
            return False
        if self.logic is not None:
            return True
        try:
            outcome = dependencyInstaller().install(ask=ask)
        except Exception as error:  # InstallError says what to do; pip failures show pip's message
            self._showError("Installing MedSegAdapt's dependencies failed", error)
            return False
        if outcome.message:
            self.ui.statusLabel.text = outcome.message
        if not outcome.ready:
            return False
        if outcome.status == "installed" and slicer.util.confirmYesNoDisplay(
                outcome.message + "\n\nRestart Slicer now? (Recommended: modules imported before the installation "
                "may be out of date until then.)", "MedSegAdapt: restart"):
            slicer.util.restart()
            return False
        try:
            from MedSegAdaptLogic.logic import MedSegAdaptLogic

            self.logic = MedSegAdaptLogic()
        except Exception as error:
            self._showError("MedSegAdapt could not load its Logic; restart Slicer", error)
            return False
        self._fillLibraryLists()
        return True

    def onCheckDependencies(self):
        try:
            missing = missingDependencies()
        except RuntimeError as error:
            slicer.util.errorDisplay(str(error))
            return
        if not missing:
            slicer.util.infoDisplay("All MedSegAdapt Python dependencies are installed.")
            self._dependenciesReady(ask=False)
            return
        self._dependenciesReady(ask=True)

    def _configuredLogic(self):
        """The Logic with the Settings' checkpoint and the chosen device."""
        self.logic.configure(checkpoint=self.ui.checkpointPathLineEdit.currentPath or None,
                             device=self._parameterNode.device)
        return self.logic

    # --- long work on the worker thread, polled by the timer ----------------------------------------

    def _startJob(self, kind, function, description, context):
        """Run ``function(progress)`` on the worker thread; the timer shows its progress and finishes it."""
        self._processing.start(kind, function, description, context)
        bar = self._jobControls[kind].progressBar
        bar.setValue(0)
        bar.format = "Waiting" if self._processing.job.state == "queued" else "Loading model"
        self._checkCanApply()
        self._timer.start()

    def _startOrStop(self, kind):
        """A start/stop button was pressed: stop the running ``kind`` job (None), or return the configured
        Logic to start one with (None when the dependencies are missing)."""
        if self._processing.kind == kind:
            if kind in ABANDONED_ON_CANCEL:
                self._processing.stop(abandon=True)
                self._showStopped(kind, "Cancelled; nothing was changed.")
            else:
                self._processing.stop()
                self._jobControls[kind].statusLabel.text = "Stopping after the current step..."
            self._checkCanApply()
            return None
        if not self._dependenciesReady():
            return None
        return self._configuredLogic()

    def _showStopped(self, kind, message):
        controls = self._jobControls.get(kind)
        if controls is not None:
            controls.progressBar.format = "Cancelled"
            controls.statusLabel.text = message
        self._checkCanApply()

    def onPollJob(self):
        running = self._processing.job
        if running is not None:
            controls = self._jobControls[self._processing.kind]
            bar = controls.progressBar
            bar.maximum = max(running.total, 1)
            bar.setValue(running.done if running.total else 0)
            bar.format = (progress_text(running.stage, running.done, running.total) if running.state == "running"
                          else "Waiting")
            if self._processing.kind == "finetune":
                self._showTrainingHistory(self._processing.context)
        finished = self._processing.poll()
        if finished is None:
            if not self._processing.busy:
                self._timer.stop()
            return
        self._timer.stop()
        kind, job, context = finished
        controls = self._jobControls[kind]
        bar = controls.progressBar
        if job.state == "failed":
            bar.format = "Failed"
            self._showError(controls.failure, job.error, controls.statusLabel)
        else:
            bar.format = "Done" if job.state == "done" else ("Stopped" if kind == "finetune" else "Cancelled")
            if job.state == "done":
                bar.setValue(bar.maximum)
            finish = {"segment": self._finishSegmentation, "suggest": self._finishSuggestions,
                      "finetune": self._finishFineTuning, "generate": self._finishGenerating,
                      "find": self._finishFind, "candidate": self._finishCandidate,
                      "repropagate": self._finishRepropagation}[kind]
            finish(job, context)
        self._checkCanApply()

    # --- segmentation -------------------------------------------------------------------------------

    def onApplyButton(self):
        logic = self._startOrStop("segment")
        if logic is None:
            return
        node = self._parameterNode
        try:
            # Scene reading happens here, on the main thread.
            request = logic.prepare(node.inputVolume, self.ui.structureComboBox.currentText, node.roi,
                                    node.points, node.backgroundPoints, report=self.ui.reportTextEdit.toPlainText())
        except Exception as error:
            self._showError("Cannot segment", error)
            return
        what = request.structure or "the structure the report names"
        self.ui.statusLabel.text = f"Segmenting {what}..."
        self._startJob("segment", lambda progress: logic.run_model(request, progress), f"segmenting {what}",
                       (request, node.inputVolume, node.segmentation, node.replaceSegment))

    def _saveUndoState(self, segmentationNode):
        """Save the segmentation's state in the Segment Editor's history (Ctrl+Z there undoes the model's edit)."""
        editor = self.segmentEditorWidget
        if editor is None:
            return
        if editor.segmentationNode() is not segmentationNode:
            editor.setSegmentationNode(segmentationNode)
        editor.saveStateForUndo()

    def _confirmReplace(self, name):
        return slicer.util.confirmYesNoDisplay(
            f"The segment '{name}' was corrected or drawn since the model last wrote it. Replace it with the new "
            "result?\n\nYes: replace it (Undo in the Segment Editor brings it back). No: add the result as a new "
            "segment.", "MedSegAdapt: replace a corrected segment?")

    def _finishSegmentation(self, job, context):
        request, volumeNode, segmentationNode, replace = context
        if job.state == "cancelled":
            self.ui.statusLabel.text = "Segmentation cancelled; nothing was changed."
            return
        try:
            with slicer.util.NodeModify(segmentationNode):
                segmentId = self.logic.apply(job.result, request, volumeNode, segmentationNode, replace=replace,
                                             confirm_replace=self._confirmReplace,
                                             save_undo_state=lambda: self._saveUndoState(segmentationNode))
            segmentationNode.CreateDefaultDisplayNodes()
        except Exception as error:
            self._showError("Could not write the segment", error)
            return
        outcome = job.result
        name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
        self.ui.statusLabel.text = (
            f"{name}: {int(outcome.mask.sum())} voxels in {outcome.seconds:.1f} s "
            f"({outcome.slices_encoded} slices encoded, {outcome.modality}: {outcome.modality_reason})."
            + (f" Lesion: {self.logic.last_measurement}." if self.logic.last_measurement is not None else "")
        )
        self.ui.correctionSegmentComboBox.currentText = name

    # --- report-driven segmentation: Find, the candidate table, Apply to candidate --------------------

    def onFindCandidates(self):
        logic = self._startOrStop("find")
        if logic is None:
            return
        node = self._parameterNode
        try:
            # The report names what to find (the structure box is not used); the volume is read here.
            request = logic.prepare_find(node.inputVolume, self.ui.reportTextEdit.toPlainText())
        except Exception as error:
            self._showError("Cannot find the report's candidates", error, self.ui.candidateStatusLabel)
            return
        self._showCandidates(None)
        self.ui.candidateStatusLabel.text = f"Finding what the report describes in {node.inputVolume.GetName()}..."
        self._startJob("find", lambda progress: logic.run_find(request, progress), "finding the report's candidates",
                       node.inputVolume)

    def _finishFind(self, job, volumeNode):
        if job.state == "cancelled":
            self.ui.candidateStatusLabel.text = "Find cancelled."
            return
        found = job.result
        self._showCandidates(found)
        self.ui.candidateStatusLabel.text = self._candidatesSummary(found)
        if found.candidates:
            self.ui.candidatesTableWidget.selectRow(0)
            self.onCandidateClicked(0, 0)

    def _candidatesSummary(self, found):
        """What the report was understood to say and how many candidates it gave (the status's first line)."""
        count = len(found.candidates)
        return (f"Understood: {self.logic.understood_text(found)}. {count} candidate{'s' if count != 1 else ''} "
                f"in {found.seconds:.1f} s, best first by the {found.understood['ranked_by']}; click one to show it.")

    def _showCandidates(self, found):
        self._found = found
        rows = self.logic.candidate_rows(found) if self.logic is not None and found is not None else []
        self._fillTable(self.ui.candidatesTableWidget, rows)
        self._checkCanApply()

    def _selectedCandidate(self):
        """The selected row's candidate dict (its 'rank' is 1-based), or None."""
        table = self.ui.candidatesTableWidget
        row = table.currentRow()
        found = self._found
        return (found.candidates[row] if found is not None and table.selectedItems()
                and 0 <= row < len(found.candidates) else None)

    def onCandidateClicked(self, row, column):
        found = self._found
        if found is None or not 0 <= row < len(found.candidates):
            return
        candidate = found.candidates[row]
        volumeNode = found.request.volume_node
        try:
            slicer.util.setSliceViewerLayers(background=volumeNode)
            position = self.logic.jump_to_candidate(volumeNode, candidate)
        except Exception as error:
            self._showError("Cannot show the candidate", error, self.ui.candidateStatusLabel)
            return
        self.ui.candidateStatusLabel.text = (
            self._candidatesSummary(found) + "\n" + self.logic.candidate_text(candidate)
            + f". Centre R {position[0]:.1f}, A {position[1]:.1f}, S {position[2]:.1f} mm (voxel "
            + ", ".join(str(v) for v in candidate["centre_ijk"]) + "). Apply to candidate keeps it as a new segment.")

    def onApplyCandidate(self):
        logic = self._startOrStop("candidate")
        if logic is None:
            return
        node, found, candidate = self._parameterNode, self._found, self._selectedCandidate()
        if found is None or candidate is None:
            self.ui.candidateStatusLabel.text = "Find the report's candidates and select one first."
            return
        if found.request.volume_node is not node.inputVolume:
            self.ui.candidateStatusLabel.text = "These candidates are of another volume: press Find again."
            return
        rank = candidate["rank"]
        how = "the localiser's outline" if found.is_whole_structure(rank) else "the model, from its box"
        self.ui.candidateStatusLabel.text = f"Segmenting candidate {rank} ({found.structure}) with {how}..."
        self._startJob("candidate", lambda progress: logic.run_candidate(found, rank, progress),
                       f"segmenting candidate {rank}", (found, node.inputVolume, node.segmentation))

    def _finishCandidate(self, job, context):
        found, volumeNode, segmentationNode = context
        if job.state == "cancelled":
            self.ui.candidateStatusLabel.text = "Segmenting the candidate cancelled; nothing was changed."
            return
        result = job.result
        try:
            with slicer.util.NodeModify(segmentationNode):
                segmentId = self.logic.apply_candidate(result, found, volumeNode, segmentationNode,
                                                       save_undo_state=lambda: self._saveUndoState(segmentationNode))
            segmentationNode.CreateDefaultDisplayNodes()
        except Exception as error:
            self._showError("Could not write the segment", error, self.ui.candidateStatusLabel)
            return
        name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
        candidate = found.candidate(result.picked + 1)
        method = ("the localiser's outline (no network)" if result.method == "localiser"
                  else f"the model from the candidate's box (steering: {result.steered_by})")
        self.ui.candidateStatusLabel.text = (
            f"{name}: {self.logic.candidate_text(candidate)}. Segmented by {method}: {int(result.mask.sum())} voxels "
            f"in {result.seconds:.1f} s."
            + (f" Lesion: {self.logic.last_measurement}." if self.logic.last_measurement is not None else ""))
        self.ui.correctionSegmentComboBox.currentText = name

    # --- suggestions --------------------------------------------------------------------------------

    def onSuggestButton(self):
        logic = self._startOrStop("suggest")
        if logic is None:
            return
        node = self._parameterNode
        try:
            request = logic.prepare_suggestion(node.inputVolume, self.ui.structureComboBox.currentText, node.budget,
                                               node.storePath, node.caseId, node.roi, node.points,
                                               node.backgroundPoints, purpose=node.rankFor)
        except Exception as error:
            self._showError("Cannot suggest slices", error, self.ui.suggestStatusLabel)
            return
        self._showSuggestions(None, [])
        self._showRound(request.structure, node.caseId)
        self.ui.suggestStatusLabel.text = f"Scoring the slices of {request.structure}..."
        self._startJob("suggest", lambda progress: logic.run_suggestion(request, progress),
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

    def _showRound(self, structure, caseId):
        """The round line: which annotation round of the case's structure this is, what the last one gained."""
        node = self._parameterNode
        if self.logic is None or node is None:
            self.ui.roundLabel.text = ""
            return
        try:
            self.ui.roundLabel.text = self.logic.round_text(node.storePath, caseId, structure)
        except Exception as error:  # shown, not raised: the line only informs
            self.ui.roundLabel.text = str(error)

    def onSuggestionClicked(self, row, column):
        volumeNode, suggestions = self._suggestions
        if volumeNode is None or not 0 <= row < len(suggestions):
            return
        try:
            self._showSlice(volumeNode, suggestions[row].axis, suggestions[row].index)
        except Exception as error:
            self._showError("Cannot show the slice", error, self.ui.suggestStatusLabel)

    def _showSlice(self, volumeNode, axis, index):
        """Show the volume in the slice views, rotated to its planes, on IJK slice ``index`` along ``axis``."""
        from MedSegAdaptLogic.scene import show_slice, slice_views

        slicer.util.setSliceViewerLayers(background=volumeNode)
        return show_slice(volumeNode, axis, index, slice_views(slicer.mrmlScene))

    # --- corrections --------------------------------------------------------------------------------

    def onRepropagate(self):
        """Re-propagate the Corrections segment from the slices edited since the model's result (kept as drawn)."""
        logic = self._startOrStop("repropagate")
        if logic is None:
            return
        node = self._parameterNode
        statusLabel = self.ui.repropagateStatusLabel
        try:
            # The edited slices are read here, on the main thread; the ROI, when placed, bounds the result.
            request = logic.prepare_repropagation(node.inputVolume, node.segmentation,
                                                  self.ui.correctionSegmentComboBox.currentText, node.roi)
        except Exception as error:
            self._showError("Cannot re-propagate", error, statusLabel)
            return
        statusLabel.text = f"Re-propagating {request.structure} from slices {request.slices_text}..."
        self._startJob("repropagate", lambda progress: logic.run_repropagation(request, progress),
                       f"re-propagating {request.structure}", (request, node.inputVolume, node.segmentation))

    def _finishRepropagation(self, job, context):
        request, volumeNode, segmentationNode = context
        statusLabel = self.ui.repropagateStatusLabel
        if job.state == "cancelled":
            statusLabel.text = "Re-propagation cancelled; nothing was changed."
            return
        try:
            with slicer.util.NodeModify(segmentationNode):
                self.logic.apply_repropagation(job.result, request, volumeNode, segmentationNode,
                                               save_undo_state=lambda: self._saveUndoState(segmentationNode))
        except Exception as error:
            self._showError("Could not write the re-propagated segment", error, statusLabel)
            return
        statusLabel.text = (f"{request.structure}: re-propagated ({request.mode}) from slices {request.slices_text}, "
                            f"{int(job.result.mask.sum())} voxels in {job.result.seconds:.1f} s. Undo in the Segment "
                            "Editor brings your edited segment back.")

    def onSubmitCorrection(self):
        if not self._dependenciesReady():
            return
        node = self._parameterNode
        slicesText = (node.annotatedSlices or "").strip()
        try:
            from MedSegAdaptLib.store import parse_slices

            slices = parse_slices(slicesText.split()) if slicesText else None
            with slicer.util.WaitCursor():
                version = self.logic.submit_correction(
                    node.inputVolume, node.segmentation, self.ui.correctionSegmentComboBox.currentText,
                    node.storePath, node.caseId, node.annotator, slices=slices,
                )
        except Exception as error:
            self._showError("Could not submit the correction", error)
            return
        self.ui.statusLabel.text = (f"Stored {version.structure} version {version.version} of case "
                                    f"{version.case_id} ({version.voxels} voxels).")
        self.onRefreshHistory()
        self._showRound(version.structure, version.case_id)

    def onRefreshHistory(self):
        node = self._parameterNode
        table = self.ui.historyTableWidget
        table.setRowCount(0)
        if not (node and node.storePath and node.caseId) or not os.path.isdir(node.storePath) or self.logic is None:
            return
        try:
            versions = self.logic.history(node.storePath, node.caseId)
        except Exception as error:
            self.ui.statusLabel.text = str(error)
            return
        self._fillTable(table, [[v.structure, v.version, v.kind, v.review_status or "", v.annotator or "", v.time,
                                 v.voxels] for v in versions])

    # --- adaptation: fine-tuning --------------------------------------------------------------------

    def onFineTuneButton(self):
        logic = self._startOrStop("finetune")
        if logic is None:
            return
        node = self._parameterNode
        try:
            options = logic.fine_tune_options(node.epochs, node.priors, semi_supervised=node.semiSupervised,
                                             text_encoder=node.textEncoder.strip() or None)
            output = node.fineTuneOutput or logic.default_checkpoint_path(node.storePath)
        except Exception as error:
            self._showError("Cannot fine-tune", error, self.ui.fineTuneStatusLabel)
            return
        self.ui.fineTuneOutputPathLineEdit.currentPath = output
        table = logic.training_history_table([], slicer.mrmlScene, node.trainingTable)
        node.trainingTable = table
        node.trainingChart = logic.training_history_chart(table, node.trainingChart)
        slicer.modules.plots.logic().ShowChartInLayout(node.trainingChart)
        records = []  # appended on the worker thread, plotted on this one
        storePath = node.storePath
        self.ui.fineTuneStatusLabel.text = f"Fine-tuning on {storePath}, writing {output} after every epoch..."
        self._startJob("finetune",
                       lambda progress: logic.fine_tune(storePath, output, options, progress, records.append),
                       "fine-tuning", {"records": records, "output": output, "shown": 0, "storePath": storePath})

    def _showTrainingHistory(self, context):
        records = list(context["records"])
        node = self._parameterNode
        if len(records) == context["shown"] or node is None or node.trainingTable is None:
            return
        self.logic.training_history_table(records, slicer.mrmlScene, node.trainingTable)
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
        self.logic.record_fine_tune(context["storePath"], result)
        self._showAdaptResults(context["storePath"])

    # --- adaptation: environment samples ------------------------------------------------------------

    def onGenerateSamples(self):
        logic = self._startOrStop("generate")
        if logic is None:
            return
        node = self._parameterNode
        storePath, environment, count = node.storePath, self.ui.environmentComboBox.currentText, node.environmentCount
        self.ui.generateStatusLabel.text = f"Generating {count} {environment} samples into {storePath}..."
        self._startJob("generate",
                       lambda progress: logic.generate_environment_samples(storePath, environment, count,
                                                                          progress=progress),
                       "generating samples", {"environment": environment, "storePath": storePath})

    def _finishGenerating(self, job, context):
        self.onRefreshReviewQueue()
        if job.state == "cancelled":
            self.ui.generateStatusLabel.text = "Stopped; the samples generated before stopping are in the store."
            return
        lines = [f"{structure}: {counts['generated']} synthetic labels ({counts['exact']} exact from the simulator), "
                 f"{counts['accepted']} accepted, {counts['queued']} queued for review"
                 for structure, counts in self.logic.summarize_samples(job.result).items()]
        self.ui.generateStatusLabel.text = (f"{context['environment']} samples in {context['storePath']}:\n"
                                            + "\n".join(lines) + "\nFine-tune to learn from the accepted ones.")
        self.logic.record_samples(context["storePath"], context["environment"],
                                  self.logic.summarize_samples(job.result))
        self._showAdaptResults(context["storePath"])

    def _showAdaptResults(self, storePath):
        """The result table of the store's sample runs and the fine-tuning after them (empty before any)."""
        table = self.ui.adaptResultsTableWidget
        if self.logic is None:
            table.setRowCount(0)
            return
        self._setColumns(table, list(self.logic.ADAPT_RESULT_COLUMNS))
        self._fillTable(table, self.logic.adapt_result_rows(storePath))

    # --- adaptation: review queue -------------------------------------------------------------------

    def onRefreshReviewQueue(self):
        node = self._parameterNode
        self._reviewLabels = []
        self.ui.reviewQueueTableWidget.setRowCount(0)
        if not (node and node.storePath) or not os.path.isdir(node.storePath) or self.logic is None:
            self._checkCanApply()
            return
        try:
            self._reviewLabels = self.logic.review_queue(node.storePath)
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
                volumeNode, segmentationNode = self.logic.preview_label(node.storePath, label.label_id,
                                                                             slicer.mrmlScene)
            node.reviewVolume, node.reviewSegmentation = volumeNode, segmentationNode
            slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
            if label.annotated_slices:  # a partial label: show its first labeled slice
                axis, indices = next(iter(label.annotated_slices.items()))
                self._showSlice(volumeNode, axis, indices[0])
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
            reviewed = self.logic.review(node.storePath, label.label_id, accept, node.reviewer,
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
    """The widgets of one kind of long work (segment, suggest, fine-tune, generate)."""

    button: Any
    idle: str
    busy: str
    progressBar: Any
    statusLabel: Any
    failure: str


#
# Test (runs inside Slicer: Reload and Test, or ctest through slicer_add_python_unittest)
#


class MedSegAdaptTest(ScriptedLoadableModuleTest):
    """Drives the panel on CTChest4: segment the right lung from an ROI (Dice), Apply again (a new segment,
    the first kept), undo, suggest slices and show one, find the left lung from a report and apply its
    candidate, submit a correction, read it back.

    Installs nothing: with dependencies missing it is skipped, saying which.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_panel_round_trip_on_ctchest4()

    def _waitForJob(self, widget, timeout=600.0):
        started = time.monotonic()
        while widget._processing.busy or widget._timer.isActive():
            slicer.app.processEvents()
            widget.onPollJob()
            time.sleep(0.05)
            self.assertLess(time.monotonic() - started, timeout, "the job did not finish")

    def test_panel_round_trip_on_ctchest4(self):
        missing = missingDependencies()
        if missing:
            self.skipTest("dependencies not installed (the self-test installs nothing): "
                          + ", ".join(d.requirement for d, _ in missing))
        import numpy as np

        from MedSegAdaptLib.evaluation.metrics import dice
        from MedSegAdaptLib.inference import Box3D
        from MedSegAdaptLib.io import ctchest4_segmentation_path, ctchest4_volume_path, read_segmentation

        slicer.util.selectModule("MedSegAdapt")
        widget = slicer.modules.medsegadapt.widgetRepresentation().self()
        self.assertTrue(widget._dependenciesReady(ask=False))
        logic = widget.logic
        volumeNode = slicer.util.loadVolume(str(ctchest4_volume_path()))
        truth = read_segmentation(ctchest4_segmentation_path()).get("right lung").mask
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "MedSegAdapt")
        segmentationNode.CreateDefaultDisplayNodes()
        parameters = widget._parameterNode
        parameters.inputVolume, parameters.segmentation = volumeNode, segmentationNode
        parameters.device = "cpu"
        widget.ui.structureComboBox.currentText = "right lung"
        empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Not placed")
        parameters.roi = empty
        self.assertFalse(widget.ui.applyButton.enabled, "an ROI with no point placed is no prompt")
        parameters.roi = logic.roi_from_box(Box3D.around(truth, margin=2), volumeNode)
        self.assertTrue(widget.ui.applyButton.enabled)

        self.delayDisplay("Segmenting the right lung (about 15 s on a CPU)")
        widget.ui.applyButton.click()
        self._waitForJob(widget)
        segmentation = segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        first = segmentation.GetNthSegmentID(0)
        score = dice(logic.segment_mask(segmentationNode, first, volumeNode), truth)
        self.delayDisplay(f"Dice right lung: {score:.3f}")
        self.assertGreaterEqual(score, 0.85)

        widget.ui.applyButton.click()  # again: a new segment, the first one kept
        self._waitForJob(widget)
        self.assertEqual(segmentation.GetNumberOfSegments(), 2)
        self.assertEqual(segmentation.GetNthSegment(1).GetName(), "right lung (2)")
        widget.segmentEditorWidget.undo()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)

        parameters.budget = 2
        widget.ui.suggestButton.click()
        self._waitForJob(widget)
        self.assertEqual(widget.ui.suggestionsTableWidget.rowCount, 2)
        widget.onSuggestionClicked(0, 0)
        axis, index = widget._suggestions[1][0].axis, widget._suggestions[1][0].index
        red = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        position = logic.slice_position_ras(volumeNode, axis, index)
        normal = [red.GetSliceToRAS().GetElement(r, 2) for r in range(3)]
        offset = sum(n * (p - red.GetSliceToRAS().GetElement(r, 3)) for r, (n, p) in enumerate(zip(normal, position)))
        self.assertAlmostEqual(offset, 0.0, places=3)  # the axial view is on the suggested slice

        widget.ui.reportTextEdit.setPlainText("left lung")  # from the report, no ROI: Find, show, Apply
        self.assertTrue(widget.ui.findCandidatesButton.enabled)
        widget.ui.findCandidatesButton.click()
        self._waitForJob(widget)
        self.assertEqual(widget.ui.candidatesTableWidget.rowCount, 1)
        self.assertTrue(widget.ui.applyCandidateButton.enabled, "the best candidate is selected")
        centre = logic.candidate_centre_ras(volumeNode, widget._found.candidates[0])
        origin = [red.GetSliceToRAS().GetElement(r, 3) for r in range(3)]
        for got, expected in zip(origin, centre):
            self.assertAlmostEqual(got, expected, places=3)  # the views are centred on the candidate
        widget.ui.applyCandidateButton.click()
        self._waitForJob(widget)
        self.assertEqual([segmentation.GetNthSegment(i).GetName() for i in range(2)], ["right lung", "left lung"])

        with tempfile.TemporaryDirectory() as folder:
            widget.ui.storePathLineEdit.currentPath = os.path.join(folder, "store")
            parameters.caseId, parameters.annotator = "ctchest4", "selftest"
            widget.ui.correctionSegmentComboBox.currentText = "right lung"
            self.assertTrue(widget.ui.submitCorrectionButton.enabled)
            widget.ui.submitCorrectionButton.click()  # the model's result goes in first, as the prediction
            self.assertEqual(widget.ui.historyTableWidget.rowCount, 2)
            self.assertTrue(widget.ui.roundLabel.text.startswith(
                "Round 2 for right lung: the model agreed with your round-1 corrections (whole volume"))
            stored = logic.history(os.path.join(folder, "store"), "ctchest4", "right lung")
            self.assertEqual([(v.version, v.kind) for v in stored], [(1, "prediction"), (2, "correction")])
            np.testing.assert_array_equal(logic.segment_mask(segmentationNode, first, volumeNode).sum(),
                                          stored[1].voxels)
        self.delayDisplay("Test passed")
