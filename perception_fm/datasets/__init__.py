"""Datasets into bags: `perception-fm import FORMAT SRC OUT_BAG` writes an MCAP bag with the stack's input topics
(image, camera_info, as config/sample.yaml reads them) plus ground truth on the /gt/* topics that
`perception-fm eval` reads. One module per source layout; perception_fm.datasets.bag writes what they read.

  tum     TUM RGB-D folder (rgb.txt, depth.txt, groundtruth.txt)          perception_fm.datasets.tum_rgbd
  frames  7-Scenes / ScanNet-style per-frame colour, depth and pose files  perception_fm.datasets.frames_folder
  images  a folder of images, no ground truth                             perception_fm.datasets.images_video
  video   a video file (OpenCV), no ground truth                          perception_fm.datasets.images_video
"""
