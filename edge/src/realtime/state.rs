//! What every request handler shares: the core's state and the realtime
//! layer's. It derefs to [`Core`], so the layers above reach the core's
//! dependencies (`st.store`, `st.config`) and pass `&st` where the core
//! wants a `&Core`; the core never sees the rest.

use crate::core::Core;
use crate::realtime::delivery::Deliveries;
use crate::realtime::hub::Hub;
use crate::realtime::presence::Presence;
use crate::realtime::typing::TypingGate;
use natter_shared::auth::Jwt;
use std::sync::Arc;

pub struct EdgeState {
    pub core: Core,
    pub jwt: Jwt,
    pub hub: Arc<Hub>,
    pub presence: Arc<Presence>,
    pub deliveries: Deliveries,
    /// Everything the edge spawns, drained in two rings on shutdown.
    pub lifecycle: natter_shared::shutdown::Tasks,
    /// Typing publishes per user and room.
    pub typing: TypingGate,
}

impl std::ops::Deref for EdgeState {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}
