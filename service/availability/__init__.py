"""The availability feed for regional platforms: aggregated counts, ETags and a change cursor."""
