//! holdfast's lab: the system run at size on one machine, as typed code rather than scripts.
//!
//! `lab hold` ([`hold`]) starts PostgreSQL's database, one aggregator, as many host gateways as
//! the open-file limit needs ([`plan`]) and mobile-sim's phones ([`children`]); measures each
//! tier's CPU and memory from /proc ([`procfs`]) and the aggregator's metrics ([`metrics`]);
//! applies and reports the kernel settings of the deployment ([`kernel`]), in a network namespace
//! of the run's own whose connection table fits a million phones ([`netns`]); and reports as text,
//! JSON and HTML ([`report`]). `lab hold-ab` ([`hold_ab`]) runs two settings of it in turn and
//! gives each one's medians, on this checkout's binaries or on another commit's, which `lab
//! build-rev` ([`revision`]) builds and keeps.
//!
//! `lab compare` ([`compare`]) loads the host gateway, the aggregator and the seed's stack
//! (Node.js with `ws`, Node.js with socket.io) in turn with the same phones and the same bytes,
//! and reports each one's memory per idle phone and CPU per byte, medians of runs.
//!
//! `lab cluster` ([`cluster::run`]) is README's local cluster: a private PostgreSQL (or SQLite),
//! aggregators behind nginx, gateways and phones, every phone verified; `lab drills` ([`drills`])
//! breaks one part of such a cluster at a time. Both start their parts through [`cluster`].
//! `lab e2e` ([`e2e`]) is the end-to-end check of scripts/e2e.sh; `lab faults` ([`faults`]) runs
//! it, README's run command, the drills, `lab hold` and the fold bench against a database broken
//! on purpose, each of which must fail and say why.
//!
//! `lab bench` ([`bench`](mod@bench)) measures such clusters (trunks into aggregators, nginx's memory),
//! single servers (the host gateway's and the aggregator's memory per idle phone, mobile-sim's
//! own CPU, what TLS phones cost the host gateway, mobile-sim next to Thor), and one aggregator
//! on a fresh database of its own ([`bench::solo`]): its write path ([`bench::write_path`]), its CPU per phone
//! byte ([`bench::flush_cpu`]), the sessions table's bounded growth ([`bench::fold`]).
//! `lab gateway-cost` ([`gateway_cost`]) measures the host gateway's cost per idle phone and per
//! phone byte, next to a Node.js `ws` server.
//!
//! The benches and `lab compare` wait for a server's count of held phones (or of open files) to
//! reach a mark through [`wait::until`].

// The lab is the team's tool, not a library: its docs are read with private items
// (`cargo doc -p lab --document-private-items`), and its modules link to the private constants
// and helpers that explain them.
#![allow(rustdoc::private_intra_doc_links)]

pub mod bench;
pub mod children;
pub mod cli;
pub mod cluster;
pub mod compare;
pub mod drills;
pub mod e2e;
pub mod faults;
pub mod gateway_cost;
pub mod hold;
pub mod hold_ab;
pub mod kernel;
pub mod metrics;
pub mod netns;
pub mod plan;
pub mod procfs;
pub mod report;
pub mod revision;
pub mod wait;
