//! What fleet mode adds beside the policy (which is `policy::etcd`): every gateway's report
//! history shipped to PostgreSQL, and the fleet report read from there.

pub mod keys;
pub mod postgres;
pub mod postgres_tls;
pub mod report;
pub mod shipping;
