"""Feature tools: PCA maps, matching, foreground segmentation, label propagation,
feature extraction helpers and model export (see docs/feature_tools.md)."""
from .export import (FeatureExportWrapper, export_onnx, export_torchscript,
                     max_abs_diff, onnx_runner)
from .extractors import (BackboneFeatures, ImageFeatures, PatchFeatureExtractor,
                         PixelPatchFeatures, backbone_patch_size, build_backbone)
from .features import (ForegroundClassifier, Matches, PCAResult, cosine_similarity,
                       dense_matches, fit_pca, foreground_probability, labels_to_mask,
                       labels_to_patches, neighborhood_mask, patch_fraction,
                       patch_labels_from_mask, pca_maps, propagate_labels,
                       sparse_matches)
from .image_io import (IMAGE_EXTENSIONS, draw_matches, heatmap, list_images, load_image,
                       overlay_mask, patch_grid_size, save_png, side_by_side, to_tensor,
                       to_uint8, upsample_map)

__all__ = [
    'BackboneFeatures', 'FeatureExportWrapper', 'ForegroundClassifier', 'IMAGE_EXTENSIONS',
    'ImageFeatures', 'Matches', 'PCAResult', 'PatchFeatureExtractor', 'PixelPatchFeatures',
    'backbone_patch_size', 'build_backbone', 'cosine_similarity', 'dense_matches',
    'draw_matches', 'export_onnx', 'export_torchscript', 'fit_pca',
    'foreground_probability', 'heatmap', 'labels_to_mask', 'labels_to_patches',
    'list_images', 'load_image', 'max_abs_diff', 'neighborhood_mask', 'onnx_runner',
    'overlay_mask', 'patch_fraction', 'patch_labels_from_mask', 'patch_grid_size',
    'pca_maps', 'propagate_labels', 'save_png', 'side_by_side', 'sparse_matches',
    'to_tensor', 'to_uint8', 'upsample_map'
]
