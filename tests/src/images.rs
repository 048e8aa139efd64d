//! images test harness
