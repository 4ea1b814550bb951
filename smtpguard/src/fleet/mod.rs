//! What fleet mode adds beside the policy (which is `policy::etcd`): every gateway's report
//! history in PostgreSQL.

pub mod postgres;
