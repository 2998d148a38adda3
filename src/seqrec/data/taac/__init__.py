"""The TAAC 2025 data layout (TencentGR-1M / TencentGR-10M): read it, score it, and write a synthetic copy.

The layout is the one described in the project's TAAC format note (``taac-format.md`` in the shared
docs); this package relies only on what the note states and, where the note says "uncertain", accepts
both variants. Nothing here assumes a property that only our own generator happens to have.

Training directory::

    seq.jsonl            one JSON list of records per user, in time order
    seq_offsets.pkl      byte offset of every line; unused by training and prediction, which stream the
                         file; reader.read_seq_offsets(path, seq_path) checks them for random access
    indexer.pkl          {'u': {raw_user_id: reid}, 'i': {creative_id: reid}, 'f': {feat_id: {raw: reid}}}
    item_feat_dict.json  {"<item_reid>": {"<feat_id>": value_reid or [value_reids]}}
    creative_emb/        emb_81_32.pkl (pickled {creative_id: vector}) and emb_<id>_<dim>/ folders of
                         JSON-lines part files {"anonymous_cid": creative_id, "emb": [floats]}

A record is ``[user_id, item_id, user_feature, item_feature, action_type, timestamp]``: either the
user-profile record (only ``user_feature`` set, one per line at any position) or an item interaction.

Evaluation directory: ``predict_seq.jsonl`` (same layout; unseen users are raw strings, unseen items keep
their raw creative_id, which is greater than the number of items, unseen feature values are strings),
``predict_set.jsonl`` (candidates ``{"creative_id", "retrieval_id", "features"}``) and, only in the
synthetic data written here, ``predict_targets.jsonl``: one JSON object a line,
``{"user_id": <as in predict_seq.jsonl>, "creative_id": <target>}``, in ``predict_seq.jsonl`` order,
holding each user's target (the first clicked ad after the history) so the score can be computed.

Memory: no per-event Python object lives longer than one chunk of lines; events end up in NumPy arrays.
The pickled multimodal feature 81 is the exception the format imposes: a pickle is loaded whole.
Internal item ids are the file's re-ids (1..num_items, 0 = padding), so no re-mapping table is needed.
"""
