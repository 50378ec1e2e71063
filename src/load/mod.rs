//! The synthetic workload generator (`tandem load`) and the acknowledged-event checker
//! (`tandem verify`). Being written.
