//! The XDP programs live in `src/bin/`: `detector` (counting) and `flood`
//! (the lab's frame generator and the bench's empty baseline). This library
//! target exists so the controller can depend on the crate and cargo knows
//! when to rebuild the objects.
#![no_std]
