//! registry test harness
