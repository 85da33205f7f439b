pub mod seek;
