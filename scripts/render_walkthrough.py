"""Render the walkthrough picture (docs/slicer-module.md): CTChest4 segmented through the module's Logic on a real MRML scene.

A slicer-core scene gets CTChest4 as a scalar volume node (``volume_to_node``), one markups ROI per
demo structure (the reference mask's box grown by 2 voxels, ``roi_from_box``) and one segmentation
node filled by ``MedSegAdaptLogic.segment`` (packaged LiteMedSAM). The segments are read back from
the node, scored with Dice against the reference and drawn offscreen with VTK: left, an axial slice
(segments filled in the node's colours, reference outlined in white); right, the node's own
closed-surface representation seen from the front.

    python scripts/render_walkthrough.py [-o Resources/Screenshots/slicer_scene_result.png] [--device cpu]
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "MedSegAdapt"), str(ROOT / "Testing")]
if not os.environ.get("DISPLAY"):
    # Go straight to EGL rather than failing on X first (VTK >= 9.4 reads this variable).
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

try:
    importlib.import_module("slicer")  # slicer-core: the MRML scene and segmentation core
    import vtk
    from vtk.util import numpy_support
except ImportError as error:
    sys.exit(f"render_walkthrough needs slicer-core and vtk ({error}); pip install slicer-core vtk")

from MedSegAdaptLogic.logic import MedSegAdaptLogic  # noqa: E402
from MedSegAdaptLogic.scene import (  # noqa: E402
    roi_from_box,
    segment_ids,
    segmentation_from_node,
    slice_position_ras,
    volume_from_node,
    volume_to_node,
)
from slicer_scene import SlicerScene, make_scene  # noqa: E402

from MedSegAdaptLib.core.constants import REFERENCE_BOX_MARGIN
from MedSegAdaptLib.demos.quick import DEMO_STRUCTURES  # noqa: E402
from MedSegAdaptLib.evaluation.metrics import dice  # noqa: E402
from MedSegAdaptLib.evaluation.overlay import DISPLAY_WINDOW, render_slices  # noqa: E402
from MedSegAdaptLib.inference import Box3D  # noqa: E402
from MedSegAdaptLib.io import (  # noqa: E402
    Segmentation,
    ctchest4_segmentation_path,
    ctchest4_volume_path,
    read_segmentation,
    read_volume,
)

AXIAL_SLICE = 20
PANEL = 600  # pixels; the picture is two square panels side by side
BACKGROUND = (0.07, 0.07, 0.09)
SLICE_COLOR = (0.95, 0.35, 0.3)  # Slicer's red (axial) slice colour: marks the slice in both panels
SURFACE_OPACITY = 0.3  # lets the vertebral column show through the lungs in the anterior view


def segment_on_scene(device: str) -> tuple[SlicerScene, Any, Any, Segmentation]:
    """(scene, volume node, segmentation node, reference): CTChest4 segmented through the Logic.

    Keep the scene referenced while its nodes are used: deleting it detaches them.
    """
    reference = read_segmentation(ctchest4_segmentation_path())
    app = make_scene()
    volume_node = volume_to_node(read_volume(ctchest4_volume_path()), app.scene, "CTChest4")
    segmentation_node = app.new_segmentation("MedSegAdapt")
    logic = MedSegAdaptLogic(device=device)
    for name in DEMO_STRUCTURES:
        box = Box3D.around(reference.get(name).mask, REFERENCE_BOX_MARGIN)
        logic.segment(volume_node, segmentation_node, name, roi_node=roi_from_box(box, volume_node, name=f"{name} ROI"))
    return app, volume_node, segmentation_node, reference


def offscreen_window() -> vtk.vtkRenderWindow:
    """A PANEL*2 x PANEL offscreen render window; SystemExit when VTK has no offscreen OpenGL."""
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    if not window.SupportsOpenGL():
        sys.exit(f"VTK's {window.GetClassName()} cannot open an offscreen OpenGL context; "
                 "install a vtk wheel with EGL or OSMesa support (VTK >= 9.4 wheels have both)")
    window.SetSize(2 * PANEL, PANEL)
    window.SetAlphaBitPlanes(1)  # depth peeling of the translucent surfaces
    window.SetMultiSamples(0)
    return window


def add_text(renderer: vtk.vtkRenderer, text: str, x: float, y: float, size: int,
             color: tuple[float, ...] = (1.0, 1.0, 1.0), bold: bool = False, justify: str = "left") -> None:
    """A 2D text actor at normalised viewport position (x, y), vertically centred there."""
    actor = vtk.vtkTextActor()
    actor.SetInput(text)
    prop = actor.GetTextProperty()
    prop.SetFontSize(size)
    prop.SetColor(*color)
    prop.SetBold(bold)
    {"left": prop.SetJustificationToLeft, "center": prop.SetJustificationToCentered,
     "right": prop.SetJustificationToRight}[justify]()
    prop.SetVerticalJustificationToCentered()
    actor.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
    actor.SetPosition(x, y)
    renderer.AddViewProp(actor)


def slice_renderer(volume_node, prediction: Segmentation, reference: Segmentation) -> vtk.vtkRenderer:
    """Left panel: render_slices' axial picture of the node's voxels (radiological) as an image actor."""
    picture = np.asarray(render_slices(volume_from_node(volume_node), prediction, [AXIAL_SLICE], reference=reference))
    height, width = picture.shape[:2]
    image = vtk.vtkImageData()
    image.SetDimensions(width, height, 1)
    rows_bottom_up = np.ascontiguousarray(picture[::-1]).reshape(-1, 3)  # VTK's first row is the bottom one
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(rows_bottom_up, deep=True))
    actor = vtk.vtkImageActor()
    actor.GetMapper().SetInputData(image)
    renderer = vtk.vtkRenderer()
    renderer.SetViewport(0.0, 0.0, 0.5, 1.0)
    renderer.SetBackground(*BACKGROUND)
    renderer.AddActor(actor)
    camera = renderer.GetActiveCamera()
    camera.ParallelProjectionOn()
    renderer.ResetCamera()
    camera.SetParallelScale(0.5 * height / 0.76)  # the slice fills 76% of the panel's height
    level, window = DISPLAY_WINDOW
    shape = volume_node.GetImageData().GetDimensions()
    add_text(renderer, f"CTChest4 axial slice {AXIAL_SLICE} of {shape[2]}", 0.04, 0.955, 20, SLICE_COLOR, bold=True)
    add_text(renderer, f"CT W {window:.0f} / L {level:.0f}", 0.96, 0.955, 16, (0.8, 0.8, 0.8), justify="right")
    add_text(renderer, "filled: MedSegAdapt segments    white outline: reference", 0.5, 0.04, 16,
             (0.85, 0.85, 0.85), justify="center")
    for letter, x, y in (("A", 0.5, 0.9), ("P", 0.5, 0.1), ("R", 0.07, 0.5), ("L", 0.93, 0.5)):
        add_text(renderer, letter, x, y, 18, (1.0, 0.85, 0.3), bold=True, justify="center")
    return renderer


def surface_renderer(volume_node, segmentation_node, scores: dict[str, float]) -> vtk.vtkRenderer:
    """Right panel: the segmentation node's closed surfaces, anterior view, with the axial slice's
    outline and a legend of structures and Dice."""
    if not segmentation_node.CreateClosedSurfaceRepresentation():
        sys.exit("slicer-core could not convert the segments to closed surfaces")
    renderer = vtk.vtkRenderer()
    renderer.SetViewport(0.5, 0.0, 1.0, 1.0)
    renderer.SetBackground(*BACKGROUND)
    renderer.UseDepthPeelingOn()
    segmentation = segmentation_node.GetSegmentation()
    for segment_id in segment_ids(segmentation_node):
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputData(segmentation_node.GetClosedSurfaceInternalRepresentation(segment_id))
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*segmentation.GetSegment(segment_id).GetColor())
        actor.GetProperty().SetSpecular(0.2)
        actor.GetProperty().SetOpacity(SURFACE_OPACITY)
        renderer.AddActor(actor)
    bounds = [0.0] * 6
    volume_node.GetRASBounds(bounds)
    z = slice_position_ras(volume_node, "k", AXIAL_SLICE)[2]
    plane = vtk.vtkPlaneSource()
    plane.SetOrigin(bounds[0], bounds[2], z)
    plane.SetPoint1(bounds[1], bounds[2], z)
    plane.SetPoint2(bounds[0], bounds[3], z)
    plane_mapper = vtk.vtkPolyDataMapper()
    plane_mapper.SetInputConnection(plane.GetOutputPort())
    plane_actor = vtk.vtkActor()
    plane_actor.SetMapper(plane_mapper)
    plane_actor.GetProperty().SetRepresentationToWireframe()
    plane_actor.GetProperty().SetColor(*SLICE_COLOR)
    plane_actor.GetProperty().SetLineWidth(2)
    plane_actor.GetProperty().LightingOff()
    renderer.AddActor(plane_actor)
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(0.0, 0.0, 0.0)
    camera.SetPosition(0.0, 1.0, 0.0)  # anterior (+A) looking back: patient's right on the left
    camera.SetViewUp(0.0, 0.0, 1.0)
    camera.ParallelProjectionOn()  # orthographic, so the axial slice is seen edge-on as a line
    renderer.ResetCamera(bounds)
    camera.SetParallelScale(0.5 * max(bounds[1] - bounds[0], bounds[5] - bounds[4]) / 0.76)
    label = vtk.vtkBillboardTextActor3D()
    label.SetInput(f"slice {AXIAL_SLICE}")
    label.SetPosition(bounds[0], bounds[3], z)  # patient's left end of the slice: the picture's right
    label.GetTextProperty().SetFontSize(16)
    label.GetTextProperty().SetColor(*SLICE_COLOR)
    label.GetTextProperty().SetJustificationToRight()
    label.GetTextProperty().SetVerticalJustificationToBottom()
    renderer.AddViewProp(label)
    add_text(renderer, "Segments as closed surfaces", 0.04, 0.955, 20, bold=True)
    add_text(renderer, "anterior view", 0.96, 0.955, 16, (0.8, 0.8, 0.8), justify="right")
    for letter, x, y in (("S", 0.5, 0.895), ("I", 0.5, 0.2), ("R", 0.035, 0.55), ("L", 0.965, 0.55)):
        add_text(renderer, letter, x, y, 18, (1.0, 0.85, 0.3), bold=True, justify="center")
    for row, segment_id in enumerate(segment_ids(segmentation_node)):
        segment = segmentation.GetSegment(segment_id)
        y = 0.135 - 0.045 * row
        add_text(renderer, segment.GetName(), 0.08, y, 17, segment.GetColor(), bold=True)
        add_text(renderer, f"Dice {scores[segment.GetName()]:.3f}", 0.92, y, 17, segment.GetColor(), bold=True,
                 justify="right")
    return renderer


def write_png(window: vtk.vtkRenderWindow, path: Path) -> None:
    """Render ``window`` and write it to ``path`` atomically (temporary file beside it, then rename)."""
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".png", prefix=f".{path.stem}-", dir=path.parent)
    os.close(handle)
    try:
        writer = vtk.vtkPNGWriter()
        writer.SetCompressionLevel(9)
        writer.SetInputConnection(grab.GetOutputPort())
        writer.SetFileName(temporary)
        writer.Write()
        if writer.GetErrorCode():
            raise OSError(f"vtkPNGWriter could not write {temporary} (error {writer.GetErrorCode()})")
        os.chmod(temporary, 0o644)  # mkstemp makes it private
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "Resources/Screenshots/slicer_scene_result.png",
                        help="PNG to write (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device for LiteMedSAM (default: cpu)")
    args = parser.parse_args()
    window = offscreen_window()
    started = time.perf_counter()
    _scene, volume_node, segmentation_node, reference = segment_on_scene(args.device)
    segmented = time.perf_counter()
    prediction = segmentation_from_node(segmentation_node, volume_node)  # masks read back with segment_mask
    scores = {segment.name: dice(segment.mask, reference.get(segment.name).mask) for segment in prediction.segments}
    for name, score in scores.items():
        print(f"  {name:28s} Dice {score:.3f}")
    window.AddRenderer(slice_renderer(volume_node, prediction, reference))
    window.AddRenderer(surface_renderer(volume_node, segmentation_node, scores))
    write_png(window, args.output)
    print(f"segmented in {segmented - started:.1f} s, rendered in {time.perf_counter() - segmented:.1f} s "
          f"({window.GetClassName()}); wrote {args.output}")


if __name__ == "__main__":
    main()
