//! The chat server (work in progress: see issue 3).

use crate::{ConnId, Ctx, Handler};

#[derive(Debug, Default)]
pub struct Chat {
    _rooms: Vec<String>,
}

impl Handler for Chat {
    fn on_frame(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId, _frame: &[u8]) {}
}
