//! Skeleton; see DESIGN.md.
