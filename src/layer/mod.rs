pub mod tar;
