"""The evaluate stage: the paper's protocol (AnomalyGPT, section 3 of the reference notes), in parallel.

Protocol, and where it differs from the reference code on purpose:

- Images are squashed to the model's square input size (224 by default) with bicubic resampling,
  as training does (the reference centre-crops at test time, a train/test mismatch).
- Image score = max of the anomaly map. Image-AUROC, F1-max per category, then the mean over
  categories.
- Pixel-AUROC, AUPRO (FPR <= 0.3, 8-connected ground-truth regions, divided by 0.3) and pixel F1-max
  over every pixel of a category at the input size. Ground truth: the 0/255 mask resized bilinearly
  to [0, 1] and cut at 0.1 (the reference's MVTec rule; VisA masks are binarised by the reader
  first). Workers keep exact per-bin counts (evaluate.pixel_state) and the driver merges them.
- Accuracy: the LLM's answer, read by ``train.model.conversation.parse_answer`` (the first whole
  word yes/no; an answer without one is wrong), with greedy decoding so it is reproducible (the
  reference samples with top_p 0.1). The reference's substring rule ("Yes"/"No" anywhere in the
  answer) is reported beside it as ``accuracy_substring``. Without the LLM: the paper's rule,
  threshold = the highest score of a normal test image of the category.
- k-shot: k normal train images per category at fixed sorted positions, recorded in metrics.json;
  the memory bank is built once per category by one actor and shared.
"""
