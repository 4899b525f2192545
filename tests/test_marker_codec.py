"""MarkerArray bytes written from numpy decode to the message built field by field."""
import numpy as np
from geometry_msgs.msg import Point
from rclpy.serialization import deserialize_message, serialize_message
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from perception_fm.ros.marker_codec import (DELETEALL, LINE_LIST, TEXT_VIEW_FACING, TRIANGLE_LIST, MarkerSpec,
                                            encode_marker_array, triangle_list)


def slow_marker(spec: MarkerSpec) -> Marker:
    marker = Marker(ns=spec.ns, id=spec.id, type=spec.type, action=spec.action, text=spec.text,
                    mesh_resource=spec.mesh_resource, frame_locked=spec.frame_locked)
    marker.header.frame_id = spec.frame_id
    marker.header.stamp.sec, marker.header.stamp.nanosec = spec.stamp
    marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = spec.position
    (marker.pose.orientation.x, marker.pose.orientation.y, marker.pose.orientation.z,
     marker.pose.orientation.w) = spec.orientation
    marker.scale.x, marker.scale.y, marker.scale.z = spec.scale
    marker.color = ColorRGBA(r=spec.color[0], g=spec.color[1], b=spec.color[2], a=spec.color[3])
    marker.lifetime.sec, marker.lifetime.nanosec = spec.lifetime
    marker.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in np.asarray(spec.points).tolist()]
    marker.colors = [ColorRGBA(r=float(r), g=float(g), b=float(b), a=float(a))
                     for r, g, b, a in np.asarray(spec.colors, np.float32).tolist()]
    return marker


def test_encoded_markers_decode_to_the_slowly_built_message():
    rng = np.random.default_rng(0)
    vertices = rng.normal(size=(40, 3))
    faces = rng.integers(0, 40, (25, 3))
    points, colors = triangle_list(vertices, faces, rng.integers(0, 256, (40, 3), dtype=np.uint8))
    specs = [
        MarkerSpec(frame_id="", stamp=(0, 0), action=DELETEALL),
        MarkerSpec(frame_id="object_7", stamp=(1700000000, 123456789), ns="objects", id=7, type=TRIANGLE_LIST,
                   position=(0.5, -1.0, 2.0), orientation=(0.0, 0.0, 0.7071067811865476, 0.7071067811865476),
                   scale=(1.0, 1.0, 1.0), color=(1.0, 1.0, 1.0, 1.0), lifetime=(2, 500), frame_locked=True,
                   points=points, colors=colors),
        MarkerSpec(frame_id="camera", stamp=(5, 6), ns="skeleton", id=3, type=LINE_LIST, scale=(0.02, 0, 0),
                   color=(0.1, 0.2, 0.3, 0.4), points=rng.normal(size=(6, 3))),
        MarkerSpec(frame_id="camera", stamp=(5, 6), ns="labels", id=4, type=TEXT_VIEW_FACING, text="7: red müg",
                   mesh_resource="file:///tmp/x.glb"),
    ]
    decoded = deserialize_message(encode_marker_array(specs), MarkerArray)
    expected = MarkerArray(markers=[slow_marker(spec) for spec in specs])
    # (through the wire once, so that float32 fields hold float32 values on both sides)
    assert decoded == deserialize_message(serialize_message(expected), MarkerArray)
    np.testing.assert_array_equal([[p.x, p.y, p.z] for p in decoded.markers[1].points], points)


def test_triangle_list_expands_faces_and_colours():
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    points, colors = triangle_list(vertices, faces, np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 0]],
                                                             np.uint8))
    np.testing.assert_array_equal(points, vertices[[0, 1, 2, 0, 2, 3]])
    # one RGBA row per expanded point, in [0, 1]: each face corner takes its vertex's colour
    np.testing.assert_allclose(colors, [[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1],
                                        [1, 0, 0, 1], [0, 0, 1, 1], [0, 0, 0, 1]])


def test_a_large_mesh_round_trips():
    rng = np.random.default_rng(1)
    points, colors = triangle_list(rng.normal(size=(5000, 3)), rng.integers(0, 5000, (5000, 3)),
                                   rng.integers(0, 256, (5000, 3), dtype=np.uint8))
    spec = MarkerSpec(frame_id="f", stamp=(1, 2), points=points, colors=colors)
    data = encode_marker_array([spec])
    assert len(data) > 15000 * (24 + 16)
    assert deserialize_message(data, MarkerArray).markers[0].points[-1].x == points[-1, 0]
