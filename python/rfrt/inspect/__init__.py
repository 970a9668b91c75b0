"""`rfrt inspect`: weight-free long-stream diagnostics of any video (SPEC §7).

Does a stream keep moving, or does it stall, copy its first second, drift in colour, go soft, or jump at chunk
boundaries? Each answer is a number in a stated unit (definitions in `metrics`, `summary` and the README):

    from rfrt.inspect import inspect_frames, inspect_video
    report = inspect_frames(frames, fps=16, chunk_frames=3)   # frames: iterable of uint8 [H, W, 3]
    report = inspect_video("video.mp4")                        # any video PyAV opens, streamed
    print(report.summary_text()); report.write_json("video.inspect.json")

OpenCV is needed (the `inspect` extra); PyAV for files; matplotlib for the plot.
"""
from .analyzer import StreamAnalyzer, inspect_frames
from .reader import InspectError, VideoFrames, inspect_video, read_chunk_metadata, rfrt_chunk_metadata
from .report import InspectConfig, InspectReport, Seam, SecondCurves, Summary

__all__ = ["InspectConfig", "InspectError", "InspectReport", "Seam", "SecondCurves", "StreamAnalyzer", "Summary",
           "VideoFrames", "inspect_frames", "inspect_video", "read_chunk_metadata",
           "rfrt_chunk_metadata"]
