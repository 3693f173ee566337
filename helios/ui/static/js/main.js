// Boot: the router draws the page of the address (js/router.js says how pages are made).
import { start } from "./router.js";

start();
